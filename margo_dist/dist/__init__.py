"""Distributed plumbing: the communicator seam, row ownership, sharded tables.

Nothing outside this package calls ``torch.distributed``; local mode uses the same
classes with a one-process communicator (docs/architecture.md, distributed mode).
"""
