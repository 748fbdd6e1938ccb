"""Settings: ``pipetune.toml`` < ``PIPETUNE_*`` environment < command-line flags.

One frozen :class:`Settings` object, validated when it is made, so a bad
value fails at start-up with one line naming the key, the value, where it
came from and what is allowed — never half-way through a tuning job.

The file is the first that exists of: ``--config PATH``, ``$PIPETUNE_CONFIG``,
``./pipetune.toml``, ``$PIPETUNE_HOME/pipetune.toml``.  Keys are the field
names below (``store = "influxdb://..."``); the environment uses
``PIPETUNE_`` + the upper-case name (``PIPETUNE_STORE``).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipetune.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

OBJECTIVES = ("runtime", "energy", "edp", "resource_time", "memory")
CONTROLLERS = ("auto", "cgroup", "affinity", "dry-run")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def default_home() -> Path:
    env = os.environ.get("PIPETUNE_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "pipetune"


def _default_socket() -> str:
    if os.geteuid() == 0:
        return "/run/pipetune/daemon.sock"
    return str(default_home() / "daemon.sock")


def _in_range(lo: float, hi: float) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if lo <= v <= hi else f"must be between {lo} and {hi}"

    return check


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}"

    return check


def _store_url(v: Any) -> str | None:
    scheme = str(v).partition("://")[0]
    if scheme in ("sqlite", "influxdb", "influxdb2"):
        return None
    return "must start with sqlite://, influxdb:// or influxdb2://"


def _folder_or_absent(v: Any) -> str | None:
    """``home`` must be a folder, or not exist yet below a folder (it is
    created when first written): a file there fails every command later."""
    path = Path(v).expanduser()
    for p in (path, *path.parents):
        if p.exists():
            if p.is_dir():
                return None
            return "is a file, not a folder" if p == path else f"{str(p)!r} is a file, not a folder"
    return None


def _setting(
    default: Any = None,
    *,
    check: Callable[[Any], str | None] | None = None,
    help: str = "",
    factory: Callable[[], Any] | None = None,
) -> Any:
    meta = {"check": check, "help": help}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """Everything a pipetune process can be told.  See README "Configuration"."""

    home: Path = _setting(
        factory=default_home, check=_folder_or_absent, help="data folder (store, spool, model)"
    )
    store: str = _setting(
        "", check=_store_url, help="store URL; default sqlite:///HOME/pipetune.db"
    )
    node: str = _setting(factory=socket.gethostname, help="this node's name in the store")
    interval_ms: int = _setting(1000, check=_positive, help="perf sampling interval")
    warmup_s: float = _setting(
        1.0, check=_non_negative, help="seconds after a config change not counted in a probe"
    )
    probe_min_s: float = _setting(
        2.0, check=_non_negative,
        help="seconds a probe measures at least: short epochs are aggregated, budget allowing",
    )
    threshold: float = _setting(
        0.8, check=_in_range(0.0, 1.0), help="ground-truth similarity needed to skip probing"
    )
    objective: str = _setting("runtime", check=_one_of(OBJECTIVES), help="what probing minimises")
    model: str = _setting("", help="ground-truth model file; default HOME/groundtruth.json")
    controller: str = _setting("auto", check=_one_of(CONTROLLERS), help="how configs are applied")
    socket: str = _setting(factory=_default_socket, help="daemon Unix socket path")
    log_level: str = _setting("INFO", check=_one_of(LOG_LEVELS), help="logging level")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            value = getattr(self, f.name)
            if check is not None and value not in ("", None):
                problem = check(value)
                if problem:
                    shown = str(value) if isinstance(value, Path) else value
                    raise ConfigError(f"setting {f.name}={shown!r}: {problem}")
        if not self.store:
            object.__setattr__(self, "store", f"sqlite:///{self.home / 'pipetune.db'}")
        if not self.model:
            object.__setattr__(self, "model", str(self.home / "groundtruth.json"))

    @property
    def spool_dir(self) -> Path:
        return self.home / "spool"

    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        *,
        config_file: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Settings:
        """Merge file < environment < flags (flags that are None are unset)."""
        env = os.environ if env is None else env
        values: dict[str, tuple[Any, str]] = {}
        path = _find_file(config_file, env)
        if path is not None:
            for k, v in _read_toml(path).items():
                values[k] = (v, str(path))
        names = {f.name for f in dataclasses.fields(cls)}
        for name in names:
            key = "PIPETUNE_" + name.upper()
            if key in env and env[key] != "":
                values[name] = (env[key], f"${key}")
        for k, v in (flags or {}).items():
            if v is not None:
                values[k] = (v, f"--{k.replace('_', '-')}")
        unknown = sorted(set(values) - names)
        if unknown:
            k = unknown[0]
            raise ConfigError(
                f"unknown setting {k!r} in {values[k][1]} (known: {', '.join(sorted(names))})"
            )
        kwargs = {k: _convert(cls, k, v, src) for k, (v, src) in values.items()}
        try:
            return cls(**kwargs)
        except ConfigError as e:
            # Name the source of the bad value too.
            for k, (_, src) in values.items():
                if str(e).startswith(f"setting {k}="):
                    raise ConfigError(f"{e} (from {src})") from None
            raise

    def describe(self) -> dict[str, str]:
        return {f.name: str(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _find_file(explicit: str | Path | None, env: Mapping[str, str]) -> Path | None:
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r}: not found")
        return path
    if env.get("PIPETUNE_CONFIG"):
        path = Path(env["PIPETUNE_CONFIG"]).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} (from $PIPETUNE_CONFIG): not found")
        return path
    home = Path(env["PIPETUNE_HOME"]).expanduser() if env.get("PIPETUNE_HOME") else default_home()
    for path in (Path("pipetune.toml"), home / "pipetune.toml"):
        if path.is_file():
            return path
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as e:
        raise ConfigError(f"config file {str(path)!r}: cannot read: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r}: not valid TOML: {e}") from e
    # Accept both top-level keys and a [pipetune] table.
    section = data.get("pipetune", data)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {str(path)!r}: [pipetune] must be a table")
    return {k.replace("-", "_"): v for k, v in section.items() if not isinstance(v, dict)}


def _convert(cls: type, name: str, value: Any, source: str) -> Any:
    ftype = {f.name: f.type for f in dataclasses.fields(cls)}[name]
    try:
        if ftype in ("int", int):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if ftype in ("float", float):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if ftype in ("Path", Path):
            return Path(str(value)).expanduser()
        if name == "log_level":
            return str(value).upper()
        return str(value)
    except (TypeError, ValueError):
        kind = ftype if isinstance(ftype, str) else ftype.__name__
        raise ConfigError(f"setting {name}={value!r} (from {source}): must be {kind}") from None
