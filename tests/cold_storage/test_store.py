"""ColdStore against a real DVC repository and a local-folder DVC remote in tmp_path.

The store root sits inside a project folder that has its own git and DVC repositories, as
it does in a Mycelium checkout.
"""

import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
from dvc.repo import Repo
from torch import nn

from mycelium.cold_storage.bundle import read_bundle, write_bundle
from mycelium.cold_storage.smote import smote_settings
from mycelium.cold_storage.store import ColdStore, domain_folder_name, domain_from_folder_name
from mycelium.errors import ConfigError, IntegrityError, StorageError

DOMAIN = "tabular/segments"


@pytest.fixture(autouse=True)
def dvc_site_cache(tmp_path, monkeypatch):
    # DVC keeps per-repository state under /var/tmp/dvc by default. Tests keep it in tmp_path.
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site-cache"))


@pytest.fixture
def project(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    subprocess.run(["git", "init", "--quiet", str(folder)], check=True)
    Repo.init(str(folder)).close()
    return folder


@pytest.fixture
def store(project):
    with ColdStore(project / "storage" / "coldstore", project / "storage" / "remote") as cold_store:
        yield cold_store


def _write_version(path, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    rng = np.random.default_rng(seed)
    buffer = pd.DataFrame(rng.normal(size=(40, 3)), columns=["a", "b", "c"])
    buffer["label"] = rng.integers(0, 4, size=40)
    return write_bundle(
        path,
        state_dict=model.state_dict(),
        mode="int8",
        metadata={"domain": DOMAIN, "seed": seed},
        buffer=buffer,
        smote=smote_settings(buffer["label"].to_numpy()),
        expectations={"columns": ["a", "b", "c", "label"]},
    )


def _add(store, seed):
    path = store.next_version_path(DOMAIN)
    _write_version(path, seed)
    return store.add_version(DOMAIN, path)


def _files(folder):
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def test_store_root_is_its_own_dvc_repo(store, project):
    config = (store.root / ".dvc" / "config").read_text()

    assert (project / ".dvc").is_dir()
    assert (store.root / ".dvc").is_dir()
    assert "no_scm = True" in config
    assert "analytics = False" in config
    assert "remote = coldstore" in config


def test_add_two_versions_lists_them(store):
    first = _add(store, seed=1)
    second = _add(store, seed=2)

    assert [version.version for version in store.versions(DOMAIN)] == ["v0001", "v0002"]
    assert store.latest(DOMAIN) == second
    assert store.versions(DOMAIN)[0] == first
    assert first.md5 != second.md5
    assert first.md5.endswith(".dir")
    assert first.dvc_file == first.path.with_name("v0001.dvc")
    assert first.path == store.root / "bundles" / "tabular%2Fsegments" / "v0001"
    assert store.domains() == [DOMAIN]
    assert read_bundle(second.path).metadata["seed"] == 2


def test_next_version_path_counts_up(store):
    assert store.next_version_path(DOMAIN).name == "v0001"
    _add(store, seed=1)
    assert store.next_version_path(DOMAIN).name == "v0002"
    assert store.latest("tabular/other") is None
    assert store.versions("tabular/other") == []


def test_add_version_moves_bundle_from_elsewhere(store, tmp_path):
    outside = tmp_path / "written-elsewhere"
    _write_version(outside, seed=3)

    stored = store.add_version(DOMAIN, outside)

    assert not outside.exists()
    assert stored.version == "v0001"
    assert read_bundle(stored.path).metadata["seed"] == 3


def test_add_version_rejects_tampered_bundle(store):
    path = store.next_version_path(DOMAIN)
    _write_version(path, seed=1)
    (path / "expectations.json").write_text("{}")

    with pytest.raises(IntegrityError, match=r"expectations\.json"):
        store.add_version(DOMAIN, path)

    assert store.versions(DOMAIN) == []


def test_add_version_rejects_tracked_folder(store):
    first = _add(store, seed=1)

    with pytest.raises(StorageError, match="inside the store"):
        store.add_version(DOMAIN, first.path)

    assert [version.version for version in store.versions(DOMAIN)] == ["v0001"]
    assert first.path.is_dir()


def test_reopening_store_keeps_config(store, project):
    config_file = store.root / ".dvc" / "config"
    before = config_file.read_bytes()
    mtime = config_file.stat().st_mtime_ns

    with ColdStore(store.root, project / "storage" / "remote"):
        pass

    assert config_file.read_bytes() == before
    assert config_file.stat().st_mtime_ns == mtime


def test_new_remote_url_replaces_old(store, project):
    store.close()
    new_remote = project / "storage" / "new-remote"

    with ColdStore(store.root, new_remote) as moved:
        stored = _add(moved, seed=1)

    assert str(new_remote) in (store.root / ".dvc" / "config").read_text()
    assert stored.md5 in {path.parent.name + path.name for path in new_remote.rglob("*")}
    assert not (project / "storage" / "remote").exists()


def test_failed_push_keeps_version_for_later_push(project):
    blocked_remote = project / "blocked-remote"
    blocked_remote.write_text("a file where the remote folder should be")
    with ColdStore(project / "coldstore", blocked_remote) as store:
        with pytest.raises(StorageError, match=r"dvc push failed for domain 'tabular/segments' version v0001"):
            _add(store, seed=1)

        assert [version.version for version in store.versions(DOMAIN)] == ["v0001"]
        blocked_remote.unlink()
        assert store.push(DOMAIN) == 7
        assert store.push(DOMAIN) == 0


def test_push_copies_every_object_to_remote(store, project):
    stored = _add(store, seed=1)
    remote = project / "storage" / "remote"

    remote_objects = {path.parent.name + path.name for path in remote.rglob("*") if path.is_file()}

    assert stored.md5 in remote_objects
    assert len(remote_objects) == 6 + 1


def test_checkout_restores_tampered_file(store):
    stored = _add(store, seed=1)
    expected = _files(stored.path)
    weights = stored.path / "weights.safetensors"
    # Same size and mtime, so only a content hash can see the change.
    status = weights.stat()
    data = bytearray(weights.read_bytes())
    data[200] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(status.st_atime_ns, status.st_mtime_ns))

    assert store.checkout(DOMAIN, "v0001") == stored.path

    assert _files(stored.path) == expected
    read_bundle(stored.path)


def test_checkout_restores_truncated_missing_and_extra_files(store):
    stored = _add(store, seed=1)
    _add(store, seed=2)
    expected = _files(stored.path)
    with open(stored.path / "buffer.parquet", "r+b") as handle:
        handle.truncate(10)
    (stored.path / "metadata.json").unlink()
    (stored.path / "notes.txt").write_text("not part of the version")

    store.checkout(DOMAIN, "v0001")

    assert _files(stored.path) == expected


def test_checkout_restores_damaged_cache_from_remote(store):
    stored = _add(store, seed=1)
    expected = _files(stored.path)
    for path in (store.root / ".dvc" / "cache").rglob("*"):
        if path.is_file() and not path.name.endswith(".dir"):
            path.chmod(0o644)
            path.write_bytes(b"damaged")
            # DVC trusts a cache object whose mode is read-only without hashing it again.
            path.chmod(0o444)
    shutil.rmtree(stored.path)

    store.checkout(DOMAIN, "v0001")

    assert _files(stored.path) == expected


def test_drop_local_then_checkout_restores_from_remote(store):
    stored = _add(store, seed=1)
    expected = _files(stored.path)

    store.drop_local(DOMAIN, "v0001")

    assert not stored.path.exists()
    assert [path for path in (store.root / ".dvc" / "cache").rglob("*") if path.is_file()] == []
    store.checkout(DOMAIN, "v0001")
    assert _files(stored.path) == expected


def test_checkout_without_remote_data_raises_storage_error(store, project):
    _add(store, seed=1)
    store.drop_local(DOMAIN, "v0001")
    shutil.rmtree(project / "storage" / "remote")

    with pytest.raises(StorageError) as raised:
        store.checkout(DOMAIN, "v0001")

    message = str(raised.value)
    assert DOMAIN in message
    assert "v0001" in message
    assert "coldstore" in message


def test_checkout_of_unknown_version_lists_stored_ones(store):
    _add(store, seed=1)

    with pytest.raises(StorageError, match=r"no stored version 'v0009'.*Stored versions: \['v0001'\]"):
        store.checkout(DOMAIN, "v0009")


def test_relative_remote_survives_copying_the_project(project, tmp_path, monkeypatch):
    monkeypatch.chdir(project)
    with ColdStore("storage/coldstore", "storage/remote") as store:
        stored = _add(store, seed=1)
        expected = _files(stored.path)
    copy = tmp_path / "copied-project"
    shutil.copytree(project, copy)
    shutil.rmtree(project / "storage")
    monkeypatch.chdir(copy)

    with ColdStore("storage/coldstore", "storage/remote") as store:
        store.drop_local(DOMAIN, "v0001")
        restored = store.checkout(DOMAIN, "v0001")

    assert restored == copy / "storage" / "coldstore" / "bundles" / "tabular%2Fsegments" / "v0001"
    assert _files(restored) == expected


def test_dvc_prints_nothing_to_stdout(project, capfd):
    with ColdStore(project / "quiet", project / "quiet-remote") as store:
        stored = _add(store, seed=1)
        store.drop_local(DOMAIN, stored.version)
        store.checkout(DOMAIN, stored.version)

    assert capfd.readouterr().out == ""


@pytest.mark.parametrize("domain", ["tabular/segments", "vision/digits/uci", "a b/c%d"])
def test_domain_folder_name_is_reversible(domain):
    folder = domain_folder_name(domain)

    assert "/" not in folder
    assert domain_from_folder_name(folder) == domain


@pytest.mark.parametrize("domain", ["", "/tabular", "tabular/", "a//b", "..", "a/./b"])
def test_invalid_domain_raises_config_error(domain):
    with pytest.raises(ConfigError, match="Invalid domain name"):
        domain_folder_name(domain)
