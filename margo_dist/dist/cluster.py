"""What the cluster can see: ``margo-dist cluster check``, and the storage check before a run.

``check`` joins the cluster (``--address`` or ``RAY_ADDRESS``, as ``dist.address``) and reports its
live nodes, CPUs and GPUs, whether the job API asks for a token (a request without one
is refused), and whether a storage URL is writable and readable from every node (one
task per node writes, reads back and removes a small file there).

``require_shared_storage`` runs in the driver of every distributed run before any worker
starts: on a multi-node cluster a local path for ``run.dir`` or ``data.path`` must be one
that every node mounts, or the workers would write checkpoints nobody else reads.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
import uuid
from typing import Any, Callable

from margo_dist.errors import ConfigError


def _probe(url: str) -> str:
    """On a node: write, read back and remove a small file under ``url``; '' or the error."""
    from margo_dist.data import io as mio

    name = mio.join(url, f".margo-check-{uuid.uuid4().hex}")
    try:
        mio.makedirs(url)
        with mio.open_url(name, "wb") as fh:
            fh.write(b"margo-dist")
        with mio.open_url(name, "rb") as fh:
            if fh.read() != b"margo-dist":
                return "read back other bytes than written"
        mio.remove(name)
    except Exception as exc:  # reported per node, not raised: the check goes on
        return f"{type(exc).__name__}: {exc}"
    return ""


def _token_auth(dashboard: str) -> bool | None:
    """True when the job API refuses a request without a token (401); None if it cannot be asked."""
    if not dashboard:
        return None
    url = dashboard if "://" in dashboard else f"http://{dashboard}"
    try:
        urllib.request.urlopen(f"{url}/api/version", timeout=10)
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    except OSError:
        return None
    return False


def check(address: str | None, storage: str | None) -> dict[str, Any]:
    """The facts ``cluster check`` prints, as a dict.

    ``address`` (or ``RAY_ADDRESS``) is joined as ``dist.address`` would be
    (:func:`margo_dist.dist.ray_session.ray_session`): a refused, unreachable or token-protected
    head fails in seconds with one line; ``local`` checks a private instance on this machine.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from margo_dist.dist.ray_session import ray_session

    if not (address or os.environ.get("RAY_ADDRESS")):
        raise ConfigError("cluster check: no cluster to check; pass --address HOST:PORT (or auto, or local) or "
                          "set RAY_ADDRESS")
    lines: list[str] = []
    with ray_session(address or "", lines.append, log_to_driver=False, logging_level="ERROR",
                     key="--address") as joined:
        nodes = [n for n in ray.nodes() if n["Alive"]]
        out: dict[str, Any] = {"address": joined.address, "joined": lines[0], "nodes": joined.nodes,
                               "cpus": joined.cpus, "gpus": joined.gpus, "token_auth": _token_auth(joined.dashboard),
                               "storage": storage, "storage_errors": {}}
        if storage:
            probe = ray.remote(num_cpus=0)(_probe)
            refs = {n["NodeManagerAddress"]: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                n["NodeID"], soft=False)).remote(storage) for n in nodes}
            out["storage_errors"] = {node: err for node, err in zip(refs, ray.get(list(refs.values()))) if err}
        return out


def report(facts: dict[str, Any]) -> str:
    """The check as lines a person reads."""
    auth = {True: "on (the job API refuses a request without the token)",
            False: "OFF (anyone who reaches the dashboard port can submit jobs)", None: "unknown (no dashboard)"}
    lines = [facts["joined"], f"token auth: {auth[facts['token_auth']]}"]
    if facts["storage"]:
        bad = facts["storage_errors"]
        if bad:
            lines += [f"storage {facts['storage']}: NOT reachable from {len(bad)}/{facts['nodes']} node(s)"]
            lines += [f"  {node}: {err}" for node, err in bad.items()]
        else:
            lines.append(f"storage {facts['storage']}: writable and readable from all {facts['nodes']} node(s)")
    return "\n".join(lines)


def _sees(path: str) -> bool:
    """On a node: whether ``path`` exists there."""
    return os.path.exists(path)


def unseen_by_nodes(urls: dict[str, str], probe: Callable[[str], bool] = _sees) -> dict[str, list[str]]:
    """Per local-path URL in ``urls`` (name -> URL): the live nodes that do not see it.

    The driver writes a marker file under each local path, and one task per node (pinned
    to it) asks ``probe`` whether the marker is there. URLs with a protocol (``s3://``,
    ``gs://``) are not checked: every node reaches them by name. Needs ``ray.init`` done.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) <= 1:
        return {}
    task = ray.remote(num_cpus=0)(probe)
    unseen: dict[str, list[str]] = {}
    for name, url in urls.items():
        if "://" in url and not url.startswith("file://"):
            continue
        folder = url.removeprefix("file://")
        os.makedirs(folder, exist_ok=True)
        marker = os.path.join(folder, f".margo-visible-{uuid.uuid4().hex}")
        open(marker, "w").close()
        try:
            refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
                                 ).remote(marker) for n in nodes]
            seen = ray.get(refs)
        finally:
            os.remove(marker)
        missing = [n["NodeManagerAddress"] for n, ok in zip(nodes, seen) if not ok]
        if missing:
            unseen[name] = missing
    return unseen


def require_shared_storage(urls: dict[str, str], probe: Callable[[str], bool] = _sees) -> None:
    """Refuse, before any worker starts, a local path that not every node sees
    (``unseen_by_nodes``): its workers would write checkpoints that nobody else reads."""
    unseen = unseen_by_nodes(urls, probe)
    if unseen:
        lines = [f"{name}={urls[name]} is a local path that node(s) {', '.join(nodes)} do not see"
                 for name, nodes in unseen.items()]
        raise ConfigError("; ".join(lines) + ". On a multi-node cluster use a file system every node mounts at "
                          "the same path, or an object store URL (s3://, gs://); for the built-in datasets set "
                          "MARGO_DIST_HOME to such a path. `margo-dist cluster check --storage URL` tests one "
                          "(cluster/README.md)")
