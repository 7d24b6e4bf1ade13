"""Which Ray cluster a run uses, joined on purpose: ``dist.address`` (``cluster check --address``).

``ray.init()`` without an address joins whatever head the machine has running (the latest
``ray start``, another user's included) and waits 20 s on a head that refuses it. Here:

- ``local`` starts a private instance bound to 127.0.0.1 that ignores any other instance on
  the machine. Ray binds its servers to loopback only when the node's IP is 127.0.0.1, which
  on Linux it allows only with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (its single-machine
  mode); set while the instance starts, so its processes inherit it.
- ``auto`` joins the running cluster (Ray's own search: ``RAY_ADDRESS``, the latest
  ``ray start`` head, any head running here).
- ``HOST:PORT`` or ``ray://HOST:PORT`` joins that one.
- empty: ``RAY_ADDRESS`` when set, else ``local``.

A join probes the head's port first (a refused or unreachable port fails in seconds, not
after Ray's 80 s of retries), gives Ray a short connect window, and turns a refusal into one
:class:`MargoError` line naming the address and the remedy. Every session logs one line
naming the cluster (address, nodes, CPUs, GPUs). :func:`require_resources` refuses, before
any worker starts, a request the cluster cannot hold, which Ray would wait on forever.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Iterator, Mapping

from margo_dist.config import AUTO, LOCAL, DistConfig, address_problem, split_host_port
from margo_dist.errors import ConfigError, MargoError

PROBE_TIMEOUT_S = 3.0  # a head's port that does not answer in this long is unreachable
JOIN_WAIT_S = 3  # Ray's connect window when joining (RAY_gcs_server_port_wait_time_s; Ray's default is 20)
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's node IP is 127.0.0.1, servers bind to it
WAIT_ENV = "RAY_gcs_server_port_wait_time_s"
# Lines Ray forwards from its own processes that look like errors but are not ours to act on
HARMLESS_RAY_LINES = (
    # Ray Train's PreemptionWatcher actor (max_restarts=-1, one per worker group): Ray's core
    # worker warns at ERROR level that a restart would need its constructor arguments, on
    # every run, whether or not anything is ever preempted
    re.compile(r"core_worker\.cc:\d+: Actor with class name: 'PreemptionWatcher' .* has constructor arguments "
               r"in the object store and max_restarts > 0"),
)
TOKEN_REMEDY = ("its head uses token auth: run with RAY_AUTH_MODE=token and the cluster's token in "
                "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)")
LOCAL_REMEDY = "dist.address=local trains on a private Ray instance on this machine instead"


def resolve_address(address: str, env: Mapping[str, str]) -> str:
    """The address a run joins: ``dist.address``, or ``RAY_ADDRESS`` from ``env`` when it is empty,
    or ``local`` when both are."""
    return address or env.get("RAY_ADDRESS", "") or LOCAL


def source_of(address: str, env: Mapping[str, str], key: str = "dist.address") -> str:
    """Where the resolved address came from (``key`` names the setting), for messages."""
    if address:
        return f"{key}={address}"
    return f"RAY_ADDRESS={env['RAY_ADDRESS']}" if env.get("RAY_ADDRESS") else f"{key}='' (no RAY_ADDRESS)"


def probe(address: str, source: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Refuse, in seconds, a head whose port does not accept a TCP connection."""
    parts = split_host_port(address)
    if parts is None:
        return
    try:
        with socket.create_connection(parts, timeout=timeout):
            pass
    except OSError as exc:
        why = ("refused the connection" if isinstance(exc, ConnectionRefusedError) else
               f"did not answer in {timeout:g} s" if isinstance(exc, TimeoutError) else str(exc))
        raise MargoError(f"Ray cluster at {address} ({source}): its port {why}; is the head running "
                         f"(`ray start --head`) and reachable from here? {LOCAL_REMEDY}") from None


@dataclass
class Joined:
    """The cluster a session uses, as found when it was joined."""

    address: str  # the head's GCS address (or the ray:// address)
    how: str  # "started a private Ray instance", "joined the Ray cluster", ...
    nodes: int
    cpus: float
    gpus: float
    largest: dict[str, float] = field(default_factory=dict)  # the largest node's CPU and GPU
    # per resource, the most the autoscaler may grow the cluster to; None: no autoscaler config
    ceiling: dict[str, float] | None = None
    dashboard: str = ""

    def line(self) -> str:
        return (f"{self.how} at {self.address}: {self.nodes} node(s), {self.cpus:g} CPU(s), {self.gpus:g} GPU(s)"
                + (f"; autoscales up to {_amounts(self.ceiling)}" if self.ceiling else ""))


def _amounts(resources: Mapping[str, float]) -> str:
    return ", ".join(f"{v:g} {k}(s)" if v < 2**62 else f"unlimited {k}s" for k, v in sorted(resources.items()))


def _ceiling() -> dict[str, float] | None:
    """What the autoscaler may grow the cluster to (Ray's cluster config), None where none is set."""
    import ray._private.state

    try:
        found = ray._private.state.state.get_max_resources_from_cluster_config()
    except Exception:  # a Ray client session, or a cluster without the config: no ceiling known
        return None
    if not found:
        return None
    return {k: float(v) for k, v in found.items() if k in ("CPU", "GPU") and v} or None


def _facts(address: str, how: str, dashboard: str) -> Joined:
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]
    total = ray.cluster_resources()
    largest = {key: max((n["Resources"].get(key, 0.0) for n in nodes), default=0.0) for key in ("CPU", "GPU")}
    return Joined(address=address, how=how, nodes=len(nodes), cpus=total.get("CPU", 0.0),
                  gpus=total.get("GPU", 0.0), largest=largest, ceiling=_ceiling(), dashboard=dashboard)


def _auth_failed(exc: BaseException) -> bool:
    text = f"{exc} {exc.__cause__}"
    return "AuthenticationError" in text or "InvalidAuthToken" in text or "Unauthenticated" in text


@contextmanager
def scoped_environ(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` inside the block, the old values (or none) after it."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _start_local(log_to_driver: bool, logging_level: str) -> Any:
    """A private Ray instance on 127.0.0.1 (``address="local"`` never joins another)."""
    import ray
    import ray._private.ray_constants as constants

    multi = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False  # read when Ray picks the node's IP: loopback
    try:
        with scoped_environ({LOOPBACK_ENV: "0"}):  # the instance's own processes, which read it again
            # the dashboard serves the state API that Ray Train's placement-group cleaner asks
            return ray.init(address=LOCAL, dashboard_host="127.0.0.1", log_to_driver=log_to_driver,
                            logging_level=logging_level)
    finally:
        constants.ENABLE_RAY_CLUSTER = multi


def _join(address: str, source: str, log_to_driver: bool, logging_level: str) -> Any:
    """Join the cluster at ``address`` (``auto`` or a concrete one), failing in seconds with one line."""
    import ray

    where = address
    if address == AUTO:
        from ray._private.services import canonicalize_bootstrap_address_or_die

        try:
            where = canonicalize_bootstrap_address_or_die(None)
        except ConnectionError as exc:
            raise MargoError(f"{source}: Ray finds no one cluster to join ({exc}); start one with "
                             f"`ray start --head`, name one (HOST:PORT), or {LOCAL_REMEDY}") from None
    probe(where, source)
    try:
        # the window only shortens Ray's retries against a head that refuses us; set by the user, it stays
        with scoped_environ({WAIT_ENV: os.environ.get(WAIT_ENV, str(JOIN_WAIT_S))}):
            return ray.init(address=address, log_to_driver=log_to_driver, logging_level=logging_level)
    except (ConnectionError, RuntimeError, ray.exceptions.AuthenticationError) as exc:
        if _auth_failed(exc):
            raise MargoError(f"Ray cluster at {where} ({source}) refused this process's token: "
                             f"{TOKEN_REMEDY}; or {LOCAL_REMEDY}") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MargoError(f"cannot join the Ray cluster at {where} ({source}): {first}; check the address "
                         f"(`margo-dist cluster check --address {where}`), or {LOCAL_REMEDY}") from None


@contextmanager
def ray_session(address: str, log: Callable[[str], None] = print, log_to_driver: bool = True,
                logging_level: str = "WARNING", env: Mapping[str, str] | None = None, key: str = "dist.address"
                ) -> Iterator[Joined]:
    """Ray for one run, joined by the rule of ``dist.address`` (``address``, given as setting
    ``key``; ``env`` is where ``RAY_ADDRESS`` is read, ``os.environ`` by default); one line on
    ``log`` names the cluster (in place of Ray's own INFO lines, which ``logging_level`` hides).

    A process already connected (a Tune trial, a test that started Ray) keeps its
    connection; otherwise the session shuts down what it joined or started when it ends.
    """
    import ray

    env = os.environ if env is None else env
    if ray.is_initialized():
        joined = _facts(ray.get_runtime_context().gcs_address, "using the Ray cluster this process is connected to",
                        "")
        log(joined.line())
        yield joined
        return
    resolved = resolve_address(address, env)
    source = source_of(address, env, key)
    if address_problem(resolved):
        raise ConfigError(f"{source}: {address_problem(resolved)}")
    if resolved == LOCAL:
        context = _start_local(log_to_driver, logging_level)
        how = "started a private Ray instance (dist.address=local)"
    else:
        context = _join(resolved, source, log_to_driver, logging_level)
        how = f"joined the Ray cluster ({source})"
    try:
        info = getattr(context, "address_info", {})  # a Ray client (ray://) context has none
        joined = _facts(info.get("gcs_address", resolved), how, getattr(context, "dashboard_url", "") or "")
        log(joined.line())
        yield joined
    finally:
        ray.shutdown()


@dataclass
class Needs:
    """What a run (or one trial) reserves: ``bundles`` x (``cpus``, ``gpus``) plus ``extra_cpus``."""

    what: str  # the config keys that ask for it, e.g. "dist.workers=4 x dist.cpus_per_worker=1"
    bundles: int
    cpus: float
    gpus: float = 0.0
    extra_cpus: float = 0.0

    @property
    def total(self) -> dict[str, float]:
        return {"CPU": self.bundles * self.cpus + self.extra_cpus, "GPU": self.bundles * self.gpus}


def run_needs(dist: DistConfig) -> Needs:
    """A distributed run: its workers (the coordinator actor and Ray Train's controller reserve nothing)."""
    gpus = dist.gpus_per_worker if dist.use_gpu else 0.0
    what = f"dist.workers={dist.workers} x dist.cpus_per_worker={dist.cpus_per_worker}"
    if gpus:
        what += f" (x dist.gpus_per_worker={gpus:g})"
    return Needs(what=what, bundles=dist.workers, cpus=dist.cpus_per_worker, gpus=gpus)


def check_resources(needs: Needs, joined: Joined, per: str = "") -> None:
    """Refuse a request that the cluster can never hold: Ray would wait for it forever.

    Compared with the cluster's CPUs and GPUs when it was joined, or, where Ray knows the
    autoscaler's limits (its cluster config), with the most it may grow to. A cluster that
    gains nodes by other means (nodes started by hand, an autoscaler Ray was not told of)
    can be refused here although it would grow: start the nodes first.
    """
    limits = {"CPU": joined.cpus, "GPU": joined.gpus}
    if joined.ceiling:
        limits = {k: max(v, joined.ceiling.get(k, 0.0)) for k, v in limits.items()}
    where = f"the cluster at {joined.address}"
    for key, need in needs.total.items():
        if need > limits[key] + 1e-9:
            has = f"{limits[key]:g}" + (" (its autoscaler's limit)" if joined.ceiling else "")
            raise ConfigError(f"{needs.what} needs {need:g} {key}s{per}; {where} has {has}. Ask for less, or "
                              "join a bigger cluster (dist.address)")
    largest = joined.largest if not joined.ceiling else {}  # the autoscaler may add larger nodes
    for key, each in (("CPU", needs.cpus), ("GPU", needs.gpus)):
        if largest and each > largest.get(key, 0.0) + 1e-9 and needs.bundles:
            raise ConfigError(f"{needs.what}: one worker needs {each:g} {key}s on one node; the largest node of "
                              f"{where} has {largest.get(key, 0.0):g}")


@contextmanager
def interrupts() -> Iterator[list[str]]:
    """SIGTERM raises ``KeyboardInterrupt`` in the main thread, as SIGINT does, while the block runs;
    the block gets the list of the signals' names received (Ray may raise its own, bare
    ``KeyboardInterrupt`` from a ``ray.get`` the signal interrupted).

    A distributed driver stops on either (its ``finally`` kills the workers and the private
    instance); outside the block the old handlers are back. Enter it after ``ray.init``, which
    sets Ray's own SIGTERM handlers (one of them aborts the process). In another thread (a Tune
    trial) signals cannot be handled: nothing is changed.
    """
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def stop(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        raise KeyboardInterrupt(received[-1])

    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in old:
        signal.signal(sig, stop)
    try:
        yield received
    finally:
        for sig, handler in old.items():  # None: a handler not set from Python (Ray's C++ one), not restorable
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


class HarmlessLinesFiltered:
    """A text stream that writes every line to ``target`` except Ray's known-harmless ones
    (``drop``; default ``HARMLESS_RAY_LINES``). Installed over ``sys.stderr`` by the CLI: Ray
    prints the lines it forwards from workers and actors there, looked up at each print.

    Whole lines are checked; a partial line waits for its end, except text with a carriage
    return (a progress bar redrawn in place), which passes at once. Everything else
    (``isatty``, ``fileno``, ``encoding``) is the target's."""

    def __init__(self, target: IO[str], drop: tuple[re.Pattern[str], ...] = HARMLESS_RAY_LINES) -> None:
        self._target, self._drop, self._partial = target, drop, ""

    def write(self, text: str) -> int:
        pending = self._partial + text
        *lines, self._partial = pending.split("\n")
        for line in lines:
            if not any(p.search(line) for p in self._drop):
                self._target.write(line + "\n")
        if "\r" in self._partial:
            self._target.write(self._partial)
            self._partial = ""
        return len(text)

    def flush(self) -> None:
        self._target.flush()

    def close_partial(self) -> None:
        """Write a last line that never ended (at exit)."""
        if self._partial:
            self._target.write(self._partial)
            self._partial = ""
        self._target.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)
