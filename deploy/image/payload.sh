#!/bin/sh
# The image's Python payload, in one place for the Dockerfile and for tests/deploy (which runs the same
# steps in a fresh venv, since no container engine runs in CI).
#
#   payload.sh providers SRC SPEC         resolve SPEC ("all", or names separated by spaces or commas)
#                                         against SRC/providers/<name>/pyproject.toml; prints the names
#   payload.sh debs build|runtime NAME..  Debian packages the providers' SDKs need to build / to run
#   payload.sh build SRC VENV WHEELS NAME..
#                                         wheels for the core (SRC) and the providers into WHEELS, then a
#                                         venv VENV installed from those wheels only, without pip
#   payload.sh podvm WHEELS OUT           the pod VM side's wheels (the core and its dependencies) from
#                                         WHEELS into OUT; install them with
#                                         pip install --no-index --find-links OUT cloud-api-adaptor
# NAME.. may also be one argument with the names separated by spaces (as read from a file).
set -eu

die() {
  echo "payload.sh: $*" >&2
  exit 2
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
providers)
  [ $# -eq 2 ] || die "usage: providers SRC SPEC"
  src=$1
  spec=$(printf '%s' "$2" | tr ',' ' ')
  available=""
  for dir in "$src"/providers/*/; do
    [ -f "$dir/pyproject.toml" ] && available="$available $(basename "$dir")"
  done
  if [ "$spec" = all ]; then
    spec=$available
  fi
  for name in $spec; do
    case " $available " in
    *" $name "*) echo "$name" ;;
    *) die "unknown provider '$name' (available:$available)" ;;
    esac
  done
  ;;
debs)
  [ $# -ge 1 ] || die "usage: debs build|runtime NAME..."
  stage=$1
  shift
  # shellcheck disable=SC2048 # names may come as one space-separated argument
  for name in $*; do
    case "$name:$stage" in
    # libvirt-python ships only an sdist; qemu+ssh:// URIs need an ssh client at run time.
    libvirt:build) echo "gcc libc6-dev pkg-config libvirt-dev" ;;
    libvirt:runtime) echo "libvirt0 openssh-client" ;;
    esac
  done | tr ' ' '\n' | sort -u
  ;;
build)
  [ $# -ge 3 ] || die "usage: build SRC VENV WHEELS NAME..."
  src=$1 venv=$2 wheels=$3
  shift 3
  python=${PYTHON:-python3}
  # shellcheck disable=SC2046,SC2048 # names may come as one space-separated argument
  set -- "$src" $(for name in $*; do echo "$src/providers/$name"; done)
  # One resolver run over the core and the providers: a provider's "cloud-api-adaptor" requirement is
  # satisfied by the local core, never looked up on an index.
  "$python" -m pip wheel --disable-pip-version-check --wheel-dir "$wheels" "$@"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --disable-pip-version-check --no-index "$wheels"/*.whl
  "$venv/bin/python" -m pip uninstall --disable-pip-version-check -y pip setuptools >/dev/null 2>&1 || true
  ;;
podvm)
  [ $# -eq 2 ] || die "usage: podvm WHEELS OUT"
  wheels=$1 out=$2
  python=${PYTHON:-python3}
  mkdir -p "$out"
  core=$(ls "$wheels"/cloud_api_adaptor-*.whl)
  "$python" -m pip wheel --disable-pip-version-check --no-index --find-links "$wheels" --wheel-dir "$out" "$core"
  ;;
*)
  die "usage: payload.sh providers|debs|build|podvm ..."
  ;;
esac
