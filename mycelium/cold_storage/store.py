"""Versioned bundle storage: every bundle version is a DVC-tracked folder pushed to a DVC remote.

The store root is its own DVC repository without git (``dvc init --no-scm``), so it can sit
inside a project that has its own git and DVC repositories. Layout::

    <root>/.dvc/                          DVC config and local cache
    <root>/bundles/<domain folder>/v0001/ bundle files of version 1
    <root>/bundles/<domain folder>/v0001.dvc

The domain folder is the domain name percent-encoded (``tabular/segments`` becomes
``tabular%2Fsegments``), so the mapping is reversible and needs no index file.
Versions are immutable: a new bundle always gets the next version number.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

import yaml
from filelock import FileLock

from mycelium.cold_storage.bundle import verify_bundle
from mycelium.errors import ConfigError, IntegrityError, StorageError

if TYPE_CHECKING:
    from dvc.repo import Repo

logger = logging.getLogger(__name__)

BUNDLES_DIR = "bundles"
LOCK_FILE = ".coldstore.lock"
_VERSION_PATTERN = re.compile(r"^v(\d{4,})$")
_REMOTE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
_URL_PATTERN = re.compile(r"^\w+://")
# Copies, never links: drop_local deletes cache objects, which must not change any
# workspace file.
_CACHE_LINK_TYPES = ("reflink", "copy")


@dataclass(frozen=True)
class StoredVersion:
    """One bundle version tracked by DVC.

    ``md5`` is the DVC hash of the version folder as written in ``dvc_file``
    (``<hex>.dir``). It covers every file of the bundle, ``metadata.json`` included.
    """

    domain: str
    version: str
    path: Path
    dvc_file: Path
    md5: str


class ColdStore:
    """Versioned storage of bundles in a DVC repository with a default remote.

    Mutating calls hold a file lock on ``<root>/.coldstore.lock``, so two processes that
    share a root never interleave DVC operations or pick the same version number.

    Args:
        root: folder of the store. A DVC repository without git is created there on first
            use.
        remote_url: where versions are pushed: a URL (``s3://...``) or a local folder. A
            relative folder is resolved against the current directory and written to the
            DVC config relative to ``<root>/.dvc``, so a project folder that contains both
            the root and the remote can be copied elsewhere. An absolute folder is written
            as given.
        remote_name: name of the DVC remote, made the default remote of the repository.

    Example::

        with ColdStore("storage/coldstore", "storage/remote") as store:
            path = store.next_version_path("tabular/segments")
            write_bundle(path, state_dict=..., mode="int8", ...)
            stored = store.add_version("tabular/segments", path)
            folder = store.checkout("tabular/segments", stored.version)
    """

    def __init__(self, root: str | Path, remote_url: str | Path, remote_name: str = "coldstore"):
        if not _REMOTE_NAME_PATTERN.match(remote_name):
            raise ConfigError(
                f"Invalid DVC remote name {remote_name!r}: use letters, digits, '_' and '-' only."
            )
        self.root = Path(root).resolve()
        self.remote_name = remote_name
        self.remote_url, self._remote_config_value = _resolve_remote(remote_url)
        self._repo: Repo | None = None
        _quiet_dvc()

        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(self.root / LOCK_FILE)
        with self._lock:
            self._init_repo()
            self._configure_repo()

    # Context management.

    def close(self) -> None:
        """Close the DVC repository handle. The store opens it again when needed."""
        if self._repo is not None:
            self._repo.close()
            self._repo = None

    def __enter__(self) -> ColdStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # Layout.

    def domain_dir(self, domain: str) -> Path:
        """Return the folder that contains every version of ``domain``."""
        return self.root / BUNDLES_DIR / domain_folder_name(domain)

    def domains(self) -> list[str]:
        """Return every domain with at least one stored version, sorted."""
        bundles = self.root / BUNDLES_DIR
        if not bundles.is_dir():
            return []
        found = [
            domain_from_folder_name(folder.name)
            for folder in bundles.iterdir()
            if folder.is_dir() and any(folder.glob("v*.dvc"))
        ]
        return sorted(found)

    def versions(self, domain: str) -> list[StoredVersion]:
        """Return the stored versions of ``domain``, oldest first (empty if none).

        Raises StorageError if a version's .dvc file is unreadable; ``version_names`` does not.
        """
        return [self._stored_version(domain, version) for version in self.version_names(domain)]

    def version_names(self, domain: str) -> list[str]:
        """Return the names of the stored versions of ``domain``, oldest first, without reading them."""
        folder = self.domain_dir(domain)
        if not folder.is_dir():
            return []
        numbered = []
        for dvc_file in folder.glob("v*.dvc"):
            match = _VERSION_PATTERN.match(dvc_file.stem)
            if match:
                numbered.append((int(match.group(1)), dvc_file.stem))
        return [version for _, version in sorted(numbered)]

    def latest(self, domain: str) -> StoredVersion | None:
        """Return the newest stored version of ``domain``, or None if it has none."""
        versions = self.versions(domain)
        return versions[-1] if versions else None

    def next_version_path(self, domain: str) -> Path:
        """Return the folder of the next version of ``domain``, so a bundle can be written there.

        The number is one more than the newest stored version, so it changes only when
        ``add_version`` stores a version.
        """
        latest = self.latest(domain)
        number = int(latest.version[1:]) + 1 if latest else 1
        return self.domain_dir(domain) / f"v{number:04d}"

    # Versioning.

    def add_version(self, domain: str, bundle_dir: str | Path) -> StoredVersion:
        """Store a written bundle as the next version of ``domain`` and push it to the remote.

        ``bundle_dir`` is either ``next_version_path(domain)`` (used in place) or any other
        folder, which is moved there. The bundle's hashes are verified first.

        Raises:
            IntegrityError: the bundle fails ``verify_bundle``. Nothing is stored.
            StorageError: the version folder is already taken by an unfinished version, or
                ``dvc add`` or ``dvc push`` failed. After a failed push the version is
                stored locally, and ``push`` uploads it later.
        """
        bundle_dir = Path(bundle_dir).resolve()
        with self._lock:
            target = self.next_version_path(domain)
            version = target.name
            if bundle_dir != target:
                if bundle_dir.is_relative_to(self.root / BUNDLES_DIR):
                    raise StorageError(
                        f"Bundle folder {bundle_dir} is inside the store, but the next version of "
                        f"domain {domain!r} is {target}: write the bundle to "
                        "next_version_path(domain), or outside the store to have it moved."
                    )
                if target.exists():
                    raise StorageError(
                        f"Folder {target} of domain {domain!r} version {version} exists but is not "
                        f"tracked by DVC, left by an interrupted add: remove it, or store it with "
                        f"add_version({domain!r}, {str(target)!r})."
                    )
                if not bundle_dir.is_dir():
                    raise StorageError(
                        f"Bundle folder {bundle_dir} for domain {domain!r} does not exist: write it "
                        "with write_bundle first."
                    )
            verify_bundle(bundle_dir)
            if bundle_dir != target:
                move_fix = f"check that {bundle_dir} and {target.parent} are writable, then retry"
                with self._dvc_errors("move bundle", domain, version, fix=move_fix):
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(bundle_dir, target)

            dvc_file = _dvc_file_of(target)
            with self._dvc_errors("dvc add", domain, version):
                self._open_repo().add([str(target)])
            push_fix = (
                f"the version is stored locally. Check that the remote is reachable and writable, "
                f"then call ColdStore.push({domain!r})"
            )
            with self._dvc_errors("dvc push", domain, version, fix=push_fix):
                pushed = self._open_repo().push(targets=[str(dvc_file)], remote=self.remote_name)

        stored = self._stored_version(domain, version)
        logger.info(
            "Stored domain %r version %s (%s), pushed %d files to remote %r.",
            domain,
            version,
            stored.md5,
            pushed,
            self.remote_name,
        )
        return stored

    def push(self, domain: str | None = None) -> int:
        """Push every version of ``domain`` (all domains if None) to the remote.

        Returns the number of files uploaded. Files the remote already has are skipped.
        """
        with self._lock:
            domains = [domain] if domain is not None else self.domains()
            targets = [str(stored.dvc_file) for name in domains for stored in self.versions(name)]
            if not targets:
                return 0
            with self._dvc_errors("dvc push", domain):
                return self._open_repo().push(targets=targets, remote=self.remote_name)

    def checkout(self, domain: str, version: str) -> Path:
        """Make the workspace folder of a version exactly the stored version and return it.

        Every file is compared with the md5 in the DVC cache's listing of the version. If a
        file is missing, extra, truncated or modified, the folder is rebuilt from the local
        cache, and from the remote for whatever the cache lacks or has damaged.

        Raises:
            StorageError: the version is unknown, or DVC failed to fetch or check it out.
            IntegrityError: the restored folder still differs from the listing, so the
                remote copy is damaged too.
        """
        with self._lock:
            stored = self._find_version(domain, version)
            expected = self._expected_files(stored)
            problems = _compare_folder(stored.path, expected)
            if not problems:
                return stored.path

            logger.warning(
                "Domain %r version %s differs from its stored version (%s): restoring it.",
                domain,
                version,
                "; ".join(problems[:5]),
            )
            self._restore(stored, expected)
            problems = _compare_folder(stored.path, expected)
            if problems:
                raise IntegrityError(
                    f"Domain {domain!r} version {version} still differs after restoring from remote "
                    f"{self.remote_name!r} ({'; '.join(problems[:5])}): the remote copy is damaged. "
                    "Use an earlier version, or rewrite this one from the hot model."
                )
            logger.info("Restored domain %r version %s.", domain, version)
            return stored.path

    def drop_local(self, domain: str, version: str) -> None:
        """Delete the workspace folder of a version and its objects in the local DVC cache.

        A later ``checkout`` must then download the version from the remote. Another
        version that contains an identical file will fetch that file again too.
        """
        with self._lock:
            stored = self._find_version(domain, version)
            cache_paths = [self._cache_path(stored.md5)]
            listing = self._read_cached_listing(stored.md5)
            if listing is not None:
                cache_paths += [self._cache_path(md5) for md5 in listing.values()]
            if stored.path.exists():
                shutil.rmtree(stored.path)
            for path in cache_paths:
                path.unlink(missing_ok=True)
        logger.info("Dropped the local copy of domain %r version %s.", domain, version)

    # Internals.

    def _init_repo(self) -> None:
        if (self.root / ".dvc").is_dir():
            return
        from dvc.repo import Repo

        with self._dvc_errors("dvc init"):
            Repo.init(str(self.root), no_scm=True).close()
        logger.info("Created DVC repository for cold storage at %s.", self.root)

    def _configure_repo(self) -> None:
        repo = self._open_repo()
        config = repo.config
        current_url = config["remote"].get(self.remote_name, {}).get("url")
        if (
            _same_location(current_url, self.remote_url)
            and config["core"].get("remote") == self.remote_name
            and config["core"].get("analytics") is False
            and config["cache"].get("type") == list(_CACHE_LINK_TYPES)
        ):
            return
        with self._dvc_errors("dvc config"):
            with config.edit("repo") as conf:
                conf["remote"].setdefault(self.remote_name, {})["url"] = self._remote_config_value
                conf["core"]["remote"] = self.remote_name
                conf["core"]["analytics"] = False
                conf["cache"]["type"] = ",".join(_CACHE_LINK_TYPES)
        # Objects built from the old config (remote, cache) are rebuilt on the next open.
        self.close()
        logger.info("Cold storage %s pushes to remote %r at %s.", self.root, self.remote_name, self.remote_url)

    def _open_repo(self) -> Repo:
        if self._repo is None:
            from dvc.repo import Repo

            with self._dvc_errors("open DVC repository"):
                self._repo = Repo(str(self.root))
        return self._repo

    def _find_version(self, domain: str, version: str) -> StoredVersion:
        if not _VERSION_PATTERN.match(version) or not _dvc_file_of(self.domain_dir(domain) / version).is_file():
            known = [stored.version for stored in self.versions(domain)]
            raise StorageError(
                f"Domain {domain!r} has no stored version {version!r} in {self.root}. "
                f"Stored versions: {known or 'none'}. Use one of them."
            )
        return self._stored_version(domain, version)

    def _stored_version(self, domain: str, version: str) -> StoredVersion:
        path = self.domain_dir(domain) / version
        dvc_file = _dvc_file_of(path)
        try:
            content = yaml.safe_load(dvc_file.read_text())
            md5 = content["outs"][0]["md5"]
        except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError) as exc:
            raise StorageError(
                f"{dvc_file} of domain {domain!r} version {version} is unreadable ({type(exc).__name__}: {exc}); "
                "restore the file from a backup of the store root."
            ) from exc
        return StoredVersion(domain=domain, version=version, path=path, dvc_file=dvc_file, md5=md5)

    def _cache_path(self, md5: str) -> Path:
        return Path(self._open_repo().cache.local.oid_to_path(md5))

    def _read_cached_listing(self, dir_md5: str) -> dict[str, str] | None:
        # Returns the listing {relative path: md5} of a version folder, or None if the
        # listing is missing from the local cache or damaged (its name is its own md5).
        path = self._cache_path(dir_md5)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if _md5_bytes(data) != dir_md5.removesuffix(".dir"):
            logger.warning("Cached listing %s is damaged: deleting it.", path)
            path.unlink(missing_ok=True)
            return None
        return {entry["relpath"]: entry["md5"] for entry in json.loads(data)}

    def _expected_files(self, stored: StoredVersion) -> dict[str, str]:
        listing = self._read_cached_listing(stored.md5)
        if listing is None:
            self._fetch(stored)
            listing = self._read_cached_listing(stored.md5)
        if listing is None:
            raise StorageError(
                f"Remote {self.remote_name!r} ({self.remote_url}) lacks the listing {stored.md5} of "
                f"domain {stored.domain!r} version {stored.version}: push it from a store that has "
                "it, or use an earlier version."
            )
        return listing

    def _restore(self, stored: StoredVersion, expected: dict[str, str]) -> None:
        # DVC trusts a workspace file whose size and mtime did not change, and a cache
        # object whose read-only mode is set, so damaged copies are deleted first.
        for md5 in expected.values():
            cache_path = self._cache_path(md5)
            if cache_path.exists() and _md5_file(cache_path) != md5:
                logger.warning("Cache object %s is damaged: deleting it.", cache_path)
                cache_path.unlink()
        if stored.path.exists():
            shutil.rmtree(stored.path)

        from dvc.exceptions import CheckoutError

        repo = self._open_repo()
        try:
            repo.checkout(targets=[str(stored.dvc_file)], force=True)
        except CheckoutError:
            logger.info(
                "Local cache lacks files of domain %r version %s: fetching from remote %r.",
                stored.domain,
                stored.version,
                self.remote_name,
            )
            self._fetch(stored)
            with self._dvc_errors("dvc checkout", stored.domain, stored.version):
                repo.checkout(targets=[str(stored.dvc_file)], force=True)

    def _fetch(self, stored: StoredVersion) -> None:
        with self._dvc_errors("dvc fetch", stored.domain, stored.version):
            self._open_repo().fetch(targets=[str(stored.dvc_file)], remote=self.remote_name)

    @contextmanager
    def _dvc_errors(
        self,
        operation: str,
        domain: str | None = None,
        version: str | None = None,
        fix: str | None = None,
    ) -> Iterator[None]:
        # Turns DVC and OS errors into a StorageError that names the context and a fix.
        from dvc.exceptions import DvcException

        try:
            yield
        except (DvcException, OSError) as exc:
            subject = ""
            if domain is not None:
                subject += f" for domain {domain!r}"
            if version is not None:
                subject += f" version {version}"
            fix = fix or (
                f"check that remote {self.remote_name!r} is reachable and writable and that "
                f"{self.root} is not damaged, then retry"
            )
            raise StorageError(
                f"{operation} failed{subject} in {self.root} with remote {self.remote_name!r} "
                f"({self.remote_url}): {exc}. Fix: {fix}."
            ) from exc


def domain_folder_name(domain: str) -> str:
    """Return the folder name of ``domain``: percent-encoded, reversible, one path segment.

    Raises:
        ConfigError: the domain is empty, or has an empty, ``.`` or ``..`` segment.
    """
    segments = domain.split("/") if isinstance(domain, str) else [""]
    if not domain or any(segment in ("", ".", "..") for segment in segments):
        raise ConfigError(
            f"Invalid domain name {domain!r}: use non-empty segments separated by '/', "
            "such as 'tabular/segments'."
        )
    return quote(domain, safe="")


def domain_from_folder_name(folder_name: str) -> str:
    """Return the domain whose folder name is ``folder_name`` (inverse of ``domain_folder_name``)."""
    return unquote(folder_name)


def _resolve_remote(remote_url: str | Path) -> tuple[str, str]:
    # Returns the remote as DVC resolves it (absolute) and the value to write to the config.
    # DVC reads a relative config value relative to the config file, but interprets a
    # relative value given to Config.edit relative to the current directory and converts it.
    text = str(remote_url)
    if _URL_PATTERN.match(text):
        return text, text
    path = Path(text).expanduser()
    absolute = os.path.abspath(path)
    if path.is_absolute():
        return absolute, absolute
    return absolute, os.path.relpath(absolute)


def _same_location(configured: str | None, expected: str) -> bool:
    if configured is None:
        return False
    if _URL_PATTERN.match(expected) or _URL_PATTERN.match(configured):
        return configured == expected
    return os.path.realpath(configured) == os.path.realpath(expected)


def _quiet_dvc() -> None:
    # `import dvc` attaches handlers that print INFO records of the "dvc", "dvc_data" and
    # "dvc_objects" loggers to stdout (dvc 3.67.1, dvc/logger.py setup()). Library use removes
    # them, so DVC's records reach only the application's logging configuration.
    from dvc.logger import LoggerHandler

    for name in ("dvc", "dvc_data", "dvc_objects"):
        dvc_logger = logging.getLogger(name)
        for handler in list(dvc_logger.handlers):
            if isinstance(handler, LoggerHandler):
                dvc_logger.removeHandler(handler)

    # DVC's Tqdm bars are disabled when the "dvc.progress" logger's effective level is above
    # ERROR (dvc/progress.py). An application that set a level keeps its choice.
    progress_logger = logging.getLogger("dvc.progress")
    if progress_logger.level == logging.NOTSET:
        progress_logger.setLevel(logging.CRITICAL)


def _dvc_file_of(version_dir: Path) -> Path:
    return version_dir.with_name(version_dir.name + ".dvc")


def _md5_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _compare_folder(folder: Path, expected: dict[str, str]) -> list[str]:
    # Returns one line per difference between the folder and the listing, or [] if equal.
    if not folder.is_dir():
        return [f"{folder} is missing"]
    actual = {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}
    problems = [f"{name} is missing" for name in sorted(expected.keys() - actual)]
    problems += [f"{name} is not part of the version" for name in sorted(actual - expected.keys())]
    for name in sorted(expected.keys() & actual):
        if _md5_file(folder / name) != expected[name]:
            problems.append(f"{name} is modified or truncated")
    return problems
