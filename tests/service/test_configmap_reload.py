"""Hot reload under a Kubernetes ConfigMap mount.

The kubelet never rewrites a mounted ConfigMap's files. It writes the new contents into a fresh timestamped
directory, points a `..data_tmp` symlink at it, renames that over `..data` (one atomic step), and the user-visible
names are symlinks through `..data` (`policy.yaml -> ..data/policy.yaml`); then the old directory goes. A watcher
that only looks for writes to `policy.yaml` never sees a thing. `KubeletMount` reproduces that sequence on a temp
directory; the tests show a new version goes live and a broken one does not (the last good version stays).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest

from service import policy_registry
from service.policy_registry import PolicyRegistry


class KubeletMount:
    """A directory updated the way the kubelet updates a ConfigMap volume (pkg/volume/util/atomic_writer.go)."""

    def __init__(self, root: Path):
        self.root = root
        self._generation = 0

    def write(self, files: dict[str, str]) -> None:
        self._generation += 1
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.") + f"{self._generation:09d}"
        (self.root / stamp).mkdir()
        for name, text in files.items():
            (self.root / stamp / name).write_text(text)
        old = os.readlink(self.root / "..data") if (self.root / "..data").is_symlink() else None
        os.symlink(stamp, self.root / "..data_tmp")
        os.replace(self.root / "..data_tmp", self.root / "..data")  # the atomic switch
        for name in files:  # user-visible names: created once, they resolve through ..data from now on
            if not (self.root / name).is_symlink():
                os.symlink(f"..data/{name}", self.root / name)
        for entry in self.root.iterdir():  # keys that left the ConfigMap
            if entry.is_symlink() and not entry.name.startswith(".") and entry.name not in files:
                entry.unlink()
        if old is not None:
            shutil.rmtree(self.root / old)


def policy(terms: list[str], policy_id: str = "demo") -> str:
    return (f"id: {policy_id}\ndefault: true\napplies_to: [output]\ntargets:\n  - id: t\n"
            f"    terms: [{', '.join(terms)}]\n    on_surface: redact\n")  # fmt: skip


BROKEN = "id: demo\ndefault: true\ntargets:\n  - id: t\n    termz: [Foobar]\n    on_surface: redact\n"


def terms_of(registry: PolicyRegistry, policy_id: str = "demo") -> list[str]:
    return [t for target in registry.snapshot.policies[policy_id].policy.targets for t in target.terms]


@pytest.fixture
def mount(tmp_path: Path) -> KubeletMount:
    m = KubeletMount(tmp_path / "policies")
    m.root.mkdir()
    m.write({"policy.yaml": policy(["Foobar"])})
    return m


def test_mount_looks_like_the_kubelet_s(mount: KubeletMount) -> None:
    assert (mount.root / "policy.yaml").is_symlink() and os.readlink(mount.root / "policy.yaml") == "..data/policy.yaml"
    first = os.readlink(mount.root / "..data")
    mount.write({"policy.yaml": policy(["Bazqux"])})
    second = os.readlink(mount.root / "..data")
    assert first != second and not (mount.root / first).exists() and not (mount.root / "..data_tmp").exists()
    assert sorted(p.name for p in mount.root.iterdir()) == sorted(["..data", second, "policy.yaml"])


def test_swap_makes_the_new_version_live(mount: KubeletMount) -> None:
    registry = PolicyRegistry(mount.root)
    registry.reload()
    v1 = registry.snapshot.policies["demo"].policy.ref
    assert terms_of(registry) == ["Foobar"]
    mount.write({"policy.yaml": policy(["Bazqux"])})
    registry.reload()
    assert terms_of(registry) == ["Bazqux"]
    assert registry.snapshot.policies["demo"].policy.ref != v1
    assert not registry.snapshot.errors
    # the file the registry names is the user-visible one, not a timestamped directory that will vanish
    assert registry.snapshot.policies["demo"].file == mount.root / "policy.yaml"


def test_swap_to_a_broken_version_keeps_the_last_good_one(mount: KubeletMount) -> None:
    registry = PolicyRegistry(mount.root)
    registry.reload()
    good = registry.snapshot.policies["demo"].policy.ref
    mount.write({"policy.yaml": BROKEN})
    registry.reload()
    assert registry.snapshot.policies["demo"].policy.ref == good
    assert terms_of(registry) == ["Foobar"]
    issues = registry.snapshot.errors[mount.root / "policy.yaml"]
    assert any("termz" in issue.field for issue in issues), issues
    mount.write({"policy.yaml": policy(["Bazqux"])})  # fixed: goes live, the error clears
    registry.reload()
    assert terms_of(registry) == ["Bazqux"] and not registry.snapshot.errors


def test_keys_added_and_removed_by_a_swap(mount: KubeletMount) -> None:
    """A key that a swap removes stays live through the removal grace (a swap looks like that for a moment too),
    then leaves."""
    registry = PolicyRegistry(mount.root, removal_grace_s=0.2)
    registry.reload()
    mount.write({"policy.yaml": policy(["Foobar"]), "other.yaml": policy(["Quuxly"], "other")})
    registry.reload()
    assert set(registry.snapshot.policies) == {"demo", "other"}
    mount.write({"other.yaml": policy(["Quuxly"], "other")})
    registry.reload()
    assert set(registry.snapshot.policies) == {"demo", "other"} and set(registry.snapshot.missing) == {"demo"}
    deadline = registry.snapshot.missing["demo"]
    while time.monotonic() < deadline:
        time.sleep(0.02)
    registry.reload()
    assert set(registry.snapshot.policies) == {"other"} and not registry.snapshot.missing


# ---- the same through the real watcher (watchfiles) -----------------------------------------------------------


async def _until(predicate, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("the watcher did not reload in time")
        await asyncio.sleep(0.05)


def test_watcher_follows_kubelet_swaps(mount: KubeletMount) -> None:
    watch = policy_registry.watch
    registry = PolicyRegistry(mount.root)
    registry.reload()

    async def scenario() -> None:
        task = asyncio.create_task(watch(mount.root, lambda: asyncio.to_thread(registry.reload), 50))
        try:
            await asyncio.sleep(0.5)  # let the watcher subscribe before the first swap
            mount.write({"policy.yaml": policy(["Bazqux"])})
            await _until(lambda: terms_of(registry) == ["Bazqux"])
            mount.write({"policy.yaml": BROKEN})
            await _until(lambda: bool(registry.snapshot.errors))
            assert terms_of(registry) == ["Bazqux"]  # broken version not live, last good kept
            mount.write({"policy.yaml": policy(["Corgeon"])})
            await _until(lambda: terms_of(registry) == ["Corgeon"] and not registry.snapshot.errors)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
