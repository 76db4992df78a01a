"""``make podvm``: the pod VM image, built from Debian packages and the project's own wheels.

    python -m podvm.build [--formats qcow2,raw,vhd,gcp] [--kata-agent PATH] [...]

prints the path of the qcow2 image (and of every other format asked for).  The build is
cached outside the clone, under ``$CAA_PODVM_CACHE`` or ``~/.cache/cloud-api-adaptor/podvm``,
keyed by a hash of everything it reads (the recipe in ``podvm/``, the adaptor's sources,
the agent binaries given and the options); a second call with the same inputs only prints
the path.  A file lock makes concurrent callers wait for one build.

Steps: wheels for Debian's Python (the project's, then its dependencies from PyPI, binary
only) -> the root file system (mmdebstrap, ``packages.txt``, ``rootfs/``, the profile's
overlay, ``customize.sh`` in a chroot) -> a GPT disk with a BIOS boot partition (GRUB's
core image), an EFI system partition (GRUB for x86_64 UEFI) and the ext4 root made from
the directory (``mkfs.ext4 -d``: no loop device, no mount) -> qcow2, and on request raw,
a fixed VHD and a GCP ``disk.raw`` tarball.  Needs root (mmdebstrap's root mode and the
file ownership in the image).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from podvm import disk

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: bump when the build's output changes without any input file changing
RECIPE_VERSION = "1"
SUITE = "bookworm"
#: Debian bookworm's python3: the wheels are chosen for it, not for the Python running the build
IMAGE_PYTHON = "3.11"
WHEEL_PLATFORMS = ("manylinux_2_36_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
FORMATS = ("qcow2", "raw", "vhd", "gcp")
FORMAT_FILES = {"qcow2": "podvm.qcow2", "raw": "podvm.raw", "vhd": "podvm.vhd", "gcp": "podvm-gcp.tar.gz"}
#: cache entries (image builds) kept; older ones are removed after a build
KEEP_ENTRIES = 3
#: every file's mtime in the image is clamped to this (SOURCE_DATE_EPOCH unless set)
DEFAULT_EPOCH = 1704067200  # 2024-01-01T00:00:00Z
#: the build's own agents: (option, path in the image, profile overlay)
AGENTS = (
    ("kata_agent", "usr/local/bin/kata-agent", "kata"),
    ("attestation_agent", "usr/local/bin/attestation-agent", "attestation-agent"),
    ("confidential_data_hub", "usr/local/bin/confidential-data-hub", "confidential-data-hub"),
)
BASE_UNITS = (
    "caa-userdata-source.service",
    "process-user-data.service",
    "netns@podns.service",
    "agent-protocol-forwarder.service",
    "caa-boot-report.service",
)
PROFILE_UNITS = {
    "dev": ("caa-devagent.service", "caa-podns-echo.service"),
    "kata": ("kata-agent.service",),
    "attestation-agent": ("attestation-agent.service",),
    "confidential-data-hub": ("confidential-data-hub.service",),
}


def default_cache_dir() -> Path:
    configured = os.environ.get("CAA_PODVM_CACHE")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "cloud-api-adaptor" / "podvm"


class BuildError(RuntimeError):
    """A build step failed; the message says which and carries the tail of its output."""


@dataclass(frozen=True)
class BuildOptions:
    """What the image is made from, besides the files in the clone."""

    formats: tuple[str, ...] = ("qcow2",)
    kata_agent: Path | None = None
    attestation_agent: Path | None = None
    confidential_data_hub: Path | None = None
    mirror: str = DEFAULT_MIRROR
    security_mirror: str = DEFAULT_SECURITY_MIRROR
    cache_dir: Path = field(default_factory=default_cache_dir)
    epoch: int = DEFAULT_EPOCH

    def __post_init__(self) -> None:
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown:
            raise BuildError(f"unknown image format(s) {', '.join(unknown)} (use {', '.join(FORMATS)})")
        for option, _path, _profile in AGENTS:
            given: Path | None = getattr(self, option)
            if given is not None and not given.is_file():
                raise BuildError(f"--{option.replace('_', '-')}: {given} is not a file")

    @property
    def profiles(self) -> tuple[str, ...]:
        """The overlays in ``profiles/``: the development agent unless a kata-agent is given."""
        chosen = [profile for option, _p, profile in AGENTS if getattr(self, option) is not None]
        return tuple(chosen) if self.kata_agent is not None else ("dev", *chosen)


@dataclass(frozen=True)
class Image:
    """A built image: its cache entry and what ``manifest.json`` says about it."""

    directory: Path
    manifest: dict[str, object]

    def path(self, fmt: str = "qcow2") -> Path:
        return self.directory / FORMAT_FILES[fmt]


# -- the cache key ------------------------------------------------------------------------------


def _input_files() -> list[Path]:
    files = [ROOT / "pyproject.toml", ROOT / "README.md"]
    for tree in (HERE, ROOT / "cloud_api_adaptor"):
        files += [
            p
            for p in tree.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc", ".pyo"}
        ]
    return sorted(files)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(options: BuildOptions) -> str:
    """sha256 over the recipe, the adaptor's sources, the agents given and the options."""
    digest = hashlib.sha256(f"podvm recipe {RECIPE_VERSION} {SUITE} {IMAGE_PYTHON}\n".encode())
    for path in _input_files():
        mode = path.stat().st_mode & 0o111
        digest.update(f"{path.relative_to(ROOT)} {mode:o} {_file_digest(path)}\n".encode())
    for option, target, _profile in AGENTS:
        given: Path | None = getattr(options, option)
        digest.update(f"{target} {_file_digest(given) if given else '-'}\n".encode())
    digest.update(f"{options.mirror} {options.security_mirror} {options.epoch}\n".encode())
    return digest.hexdigest()


# -- running things -----------------------------------------------------------------------------


def run(argv: Sequence[str], what: str, *, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run a build step; its stdout, or ``BuildError`` with the tail of its output."""
    done = subprocess.run(
        list(argv),
        env={**os.environ, **(env or {})},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-4000:]
        raise BuildError(f"{what} failed (exit {done.returncode}): {' '.join(argv[:3])} ...\n{tail}")
    return done.stdout


def _log(message: str) -> None:
    print(f"podvm: {message}", file=sys.stderr, flush=True)


# -- steps --------------------------------------------------------------------------------------


def build_wheels(wheels: Path) -> list[str]:
    """The project's wheel, then its dependencies as binary wheels for Debian's Python."""
    python = sys.executable
    # from a copy: setuptools would leave build/ and *.egg-info in the clone
    source = wheels.parent / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "cloud_api_adaptor", source / "cloud_api_adaptor", ignore=shutil.ignore_patterns("__pycache__")
    )
    run(
        [python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(source)],
        "wheel",
    )
    [project] = sorted(wheels.glob("cloud_api_adaptor-*.whl"))
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    run(
        [
            python, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--only-binary=:all:", "--python-version", IMAGE_PYTHON, "--implementation", "cp",
            *platforms, "--dest", str(wheels), str(project),
        ],
        "downloading the dependencies' wheels",
    )  # fmt: skip
    return sorted(p.name for p in wheels.glob("*.whl"))


def _packages() -> list[str]:
    lines = (HERE / "packages.txt").read_text().splitlines()
    return [word for line in lines for word in line.split("#", 1)[0].split()]


def _units(options: BuildOptions) -> list[str]:
    return [*BASE_UNITS, *(u for profile in options.profiles for u in PROFILE_UNITS[profile])]


def build_rootfs(options: BuildOptions, work: Path, wheels: Path, rootdir: Path) -> None:
    """mmdebstrap: minbase + packages.txt, our files, the wheels in a venv, ``customize.sh``."""
    stage = work / "stage"
    (stage / "podvm").mkdir(parents=True)
    shutil.copytree(wheels, stage / "podvm" / "wheels")
    shutil.copy(HERE / "customize.sh", stage / "podvm" / "customize.sh")
    shutil.copy(HERE / "trim-modules.txt", stage / "podvm" / "trim-modules.txt")
    overlay = work / "overlay"
    shutil.copytree(HERE / "rootfs", overlay, symlinks=True)
    for profile in options.profiles:
        shutil.copytree(HERE / "profiles" / profile, overlay, symlinks=True, dirs_exist_ok=True)
    for option, target, _profile in AGENTS:
        given: Path | None = getattr(options, option)
        if given is not None:
            (overlay / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(given, overlay / target)
            (overlay / target).chmod(0o755)
    debs = options.cache_dir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    sources = (
        f"deb {options.mirror} {SUITE} main\n"
        f"deb {options.mirror} {SUITE}-updates main\n"
        f"deb {options.security_mirror} {SUITE}-security main\n"
    )
    excluded_docs = [
        "path-exclude=/usr/share/man/*",
        "path-exclude=/usr/share/info/*",
        "path-exclude=/usr/share/doc/*",
        "path-include=/usr/share/doc/*/copyright",
        "path-exclude=/usr/share/locale/*",
        "path-include=/usr/share/locale/locale.alias",
        "path-exclude=/usr/share/lintian/*",
    ]
    argv = [
        "mmdebstrap", "--quiet", "--mode=root", "--variant=minbase", "--arch=amd64",
        "--include=" + ",".join(_packages()),
        *(f"--dpkgopt={opt}" for opt in excluded_docs),
        # the initramfs configuration must be there before the kernel package makes the first one
        f"--setup-hook=sync-in {overlay} /",
        # downloaded packages are kept between builds
        "--skip=download/empty",
        '--setup-hook=mkdir -p "$1/var/cache/apt/archives"',
        f"--setup-hook=sync-in {debs} /var/cache/apt/archives",
        f"--customize-hook=sync-out /var/cache/apt/archives {debs}",
        f"--customize-hook=sync-in {overlay} /",
        f"--customize-hook=sync-in {stage} /tmp",
        f'--customize-hook=chroot "$1" /bin/sh /tmp/podvm/customize.sh {options.profiles[0]} '
        + " ".join(_units(options)),
        SUITE, str(rootdir), "-",
    ]  # fmt: skip
    env = {"SOURCE_DATE_EPOCH": str(options.epoch), "TMPDIR": str(work)}
    done = subprocess.run(
        argv, input=sources, capture_output=True, text=True, env={**os.environ, **env}, check=False
    )
    if done.returncode != 0:
        raise BuildError(
            f"mmdebstrap failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-6000:]}"
        )
    # files made by maintainer scripts carry the build's time: clamp every mtime to the epoch
    run(
        ["find", str(rootdir), "-xdev", "-newermt", f"@{options.epoch}", "-exec",
         "touch", "--no-dereference", "--date", f"@{options.epoch}", "{}", "+"],
        "clamping mtimes",
    )  # fmt: skip


def tree_digest(rootdir: Path) -> str:
    """sha256 over every path, type, mode, owner and content of the tree (the image's reproducibility)."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(rootdir):
        dirnames.sort()
        for name in sorted([*dirnames, *filenames]):
            path = Path(dirpath) / name
            st = path.lstat()
            rel = path.relative_to(rootdir)
            if path.is_symlink():
                body = os.readlink(path)
            elif path.is_file():
                body = _file_digest(path)
            else:
                body = f"{st.st_rdev}"
            digest.update(f"{rel} {st.st_mode:o} {st.st_uid}:{st.st_gid} {body}\n".encode())
    return digest.hexdigest()


def du_bytes(path: Path) -> int:
    return int(run(["du", "-sxb", str(path)], "measuring").split()[0])


def largest_dirs(rootdir: Path, count: int = 12) -> dict[str, int]:
    """The biggest directories three levels down (MiB): where trimming would pay."""
    rows = run(["du", "-xm", "--max-depth=3", str(rootdir)], "measuring").splitlines()
    sized = sorted(((int(n), p) for n, p in (row.split("\t", 1) for row in rows)), reverse=True)
    return {"/" + str(Path(p).relative_to(rootdir)).lstrip("."): n for n, p in sized[1 : count + 1]}


def convert(source: Path, fmt: str, out: Path) -> None:
    """``out`` in format ``fmt`` from the disk ``source`` (raw or qcow2, by its suffix)."""
    source_format = "qcow2" if source.suffix == ".qcow2" else "raw"

    def qemu_img(out_format: str, *extra: str, target: Path = out) -> None:
        run(["qemu-img", "convert", "-f", source_format, "-O", out_format, *extra, str(source), str(target)],
            f"converting to {fmt}")  # fmt: skip

    if fmt == "qcow2":
        qemu_img("qcow2", "-c")
    elif fmt == "raw":
        qemu_img("raw")
    elif fmt == "vhd":
        # Azure: a fixed VHD whose virtual size is a whole number of MiB (the disk is)
        qemu_img("vpc", "-o", "subformat=fixed,force_size=on")
    elif fmt == "gcp":
        # GCP: a gzipped tar holding one file named disk.raw (old GNU format, sparse)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            qemu_img("raw", target=Path(tmp) / "disk.raw")
            run(["tar", "--format=oldgnu", "-Sczf", str(out), "-C", tmp, "disk.raw"], "gcp tarball")


# -- the whole build ----------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _unmount_below(path: Path) -> None:
    """Unmount whatever an interrupted mmdebstrap left mounted under ``path`` (deepest first)."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False)


def _remove_tree(path: Path) -> None:
    if path.exists():
        _unmount_below(path)
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def _prune(cache_dir: Path, keep: Path) -> None:
    entries = sorted(
        (p for p in cache_dir.iterdir() if p.is_dir() and (p / "manifest.json").exists() and p != keep),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in entries[KEEP_ENTRIES - 1 :]:
        _remove_tree(old)


def _load(entry: Path) -> Image | None:
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return Image(entry, manifest) if (entry / FORMAT_FILES["qcow2"]).exists() else None


def _build_entry(options: BuildOptions, key: str, entry: Path) -> Image:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=options.cache_dir))
    try:
        wheels = work / "wheels"
        _log(f"building the pod VM image {key[:16]} in {work} (profiles: {', '.join(options.profiles)})")
        wheel_names = build_wheels(wheels)
        rootdir = work / "rootfs"
        build_rootfs(options, work, wheels, rootdir)
        rootfs_seconds = time.monotonic() - started
        raw = work / "disk.raw"
        layout = disk.assemble(
            rootdir, raw, root_uuid=uuid.UUID(hex=key[:32], version=4), epoch=options.epoch, work=work
        )
        staging = work / "entry"
        staging.mkdir()
        convert(raw, "qcow2", staging / FORMAT_FILES["qcow2"])
        manifest: dict[str, object] = {
            "key": key,
            "suite": SUITE,
            "profiles": list(options.profiles),
            "packages": _packages(),
            "wheels": wheel_names,
            "kernel": sorted(p.name for p in (rootdir / "lib" / "modules").iterdir()),
            "tree_sha256": tree_digest(rootdir),
            "rootfs_bytes": du_bytes(rootdir),
            "largest_dirs_mib": largest_dirs(rootdir),
            "disk_bytes": raw.stat().st_size,
            "root_uuid": str(layout.root_uuid),
            "rootfs_seconds": round(rootfs_seconds, 1),
            "build_seconds": round(time.monotonic() - started, 1),
        }
        manifest["qcow2_bytes"] = (staging / FORMAT_FILES["qcow2"]).stat().st_size
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _remove_tree(rootdir)
        _remove_tree(entry)
        os.replace(staging, entry)
    finally:
        _remove_tree(work)
    _log(f"built in {manifest['build_seconds']} s: {entry / FORMAT_FILES['qcow2']}")
    return Image(entry, manifest)


def build(options: BuildOptions) -> Image:
    """The image for these inputs: from the cache, else built (and the cache pruned)."""
    if os.geteuid() != 0:
        raise BuildError("building the pod VM image needs root (mmdebstrap --mode=root, file owners)")
    key = cache_key(options)
    entry = options.cache_dir / key[:16]
    with _locked(options.cache_dir):
        image = _load(entry)
        if image is None:
            image = _build_entry(options, key, entry)
            _prune(options.cache_dir, keep=entry)
        for fmt in options.formats:
            target = image.path(fmt)
            if not target.exists():
                partial = target.with_name(target.name + ".partial")
                convert(image.path("qcow2"), fmt, partial)
                os.replace(partial, target)
        os.utime(entry)  # most recently used: pruned last
    return image


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m podvm.build", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--formats",
        default=os.environ.get("PODVM_FORMATS", "qcow2"),
        help=f"comma-separated: {', '.join(FORMATS)} or all (default qcow2; env PODVM_FORMATS)",
    )
    for option, target, _profile in AGENTS:
        env = "PODVM_" + option.upper()
        parser.add_argument(
            f"--{option.replace('_', '-')}",
            type=Path,
            default=Path(os.environ[env]) if os.environ.get(env) else None,
            help=f"binary installed as /{target} (env {env})",
        )
    parser.add_argument("--mirror", default=os.environ.get("PODVM_MIRROR", DEFAULT_MIRROR))
    parser.add_argument(
        "--security-mirror", default=os.environ.get("PODVM_SECURITY_MIRROR", DEFAULT_SECURITY_MIRROR)
    )
    args = parser.parse_args(argv)
    formats = FORMATS if args.formats == "all" else tuple(f.strip() for f in args.formats.split(",") if f)
    try:
        options = BuildOptions(
            formats=("qcow2", *(f for f in formats if f != "qcow2")),
            kata_agent=args.kata_agent,
            attestation_agent=args.attestation_agent,
            confidential_data_hub=args.confidential_data_hub,
            mirror=args.mirror,
            security_mirror=args.security_mirror,
            epoch=int(os.environ.get("SOURCE_DATE_EPOCH") or DEFAULT_EPOCH),
        )
        image = build(options)
    except BuildError as exc:
        print(f"podvm: {exc}", file=sys.stderr)
        return 1
    for fmt in options.formats:
        print(image.path(fmt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
