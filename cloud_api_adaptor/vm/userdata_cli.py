"""``process-user-data``: the pod VM's oneshot that provisions ``/run/peerpod``.

Usage (as the podvm's systemd unit runs it)::

    process-user-data provision-files [-t SECONDS]

``--root`` runs the job against a directory instead of ``/`` (tests, the local
provider without root); the TPM is then left alone.  The metadata base URLs
and retry pacing have hidden overrides for tests.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from cloud_api_adaptor import __version__
from cloud_api_adaptor.errors import AdaptorError, ConfigError, InvalidInput
from cloud_api_adaptor.options import parse_duration
from cloud_api_adaptor.vm.metadata import Endpoints, detect_source, read_platform
from cloud_api_adaptor.vm.provision import FetchFailed, ProvisionConfig, RetryPolicy, provision

logger = logging.getLogger(__name__)

PCR_TOOL = "tpm2_pcrextend"
_DEFAULTS = Endpoints()


def _seconds(raw: str) -> float:
    try:
        value = parse_duration("user-data-fetch-timeout", raw)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.reason) from exc
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="process-user-data", description="Provision the pod VM from its user data and initdata."
    )
    # -v/--version as the Go binary's cobra root command accepts it (the version subcommand too)
    parser.add_argument(
        "-v", "--version", action="version", version=f"process-user-data version {__version__}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("version", help="print the version")
    pf = sub.add_parser(
        "provision-files", help="fetch the user data, write the allowed files, unpack initdata"
    )
    pf.add_argument(
        "-t",
        "--user-data-fetch-timeout",
        type=_seconds,
        default=180.0,
        metavar="SECONDS",
        help="give up fetching the user data after this long (seconds or a Go duration; default 180)",
    )
    pf.add_argument("--root", type=Path, default=Path("/"), help="the VM filesystem root (default /)")
    pf.add_argument(
        "--cidata-dir",
        type=Path,
        default=None,
        help="where the cidata volume is mounted (default ROOT/media/cidata)",
    )
    hidden = argparse.SUPPRESS
    pf.add_argument("--azure-url", default=_DEFAULTS.azure, help=hidden)
    pf.add_argument("--aws-url", default=_DEFAULTS.aws, help=hidden)
    pf.add_argument("--gcp-url", default=_DEFAULTS.gcp, help=hidden)
    pf.add_argument("--alibaba-url", default=_DEFAULTS.alibaba, help=hidden)
    pf.add_argument("--retry-delay", type=float, default=RetryPolicy.delay, help=hidden)
    pf.add_argument("--retry-attempts", type=int, default=RetryPolicy.attempts, help=hidden)
    pf.add_argument("--pcr-tool", default=None, help=hidden)
    return parser


async def _provision_files(args: argparse.Namespace) -> int:
    root: Path = args.root
    cidata_dir: Path = args.cidata_dir if args.cidata_dir is not None else root / "media" / "cidata"
    # Only a real pod VM (root "/") touches the TPM, unless a test names a tool.
    pcr_tool = args.pcr_tool if args.pcr_tool is not None else (PCR_TOOL if root == Path("/") else None)
    try:
        retry = RetryPolicy(attempts=args.retry_attempts, delay=args.retry_delay)
    except ValueError as exc:
        print(f"process-user-data: {exc}", file=sys.stderr)
        return 2
    config = ProvisionConfig(
        root=root, fetch_timeout=args.user_data_fetch_timeout, retry=retry, pcr_tool=pcr_tool
    )
    endpoints = Endpoints(azure=args.azure_url, aws=args.aws_url, gcp=args.gcp_url, alibaba=args.alibaba_url)
    platform = read_platform(root, cidata_dir)
    logger.info(
        "platform: sys_vendor=%r hypervisor=%r cidata=%s",
        platform.sys_vendor,
        platform.hypervisor_vendor,
        platform.cidata_user_data,
    )
    try:
        # One budget for detection (the GCP probe) and the fetch, as Go's single ctx.
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(config.fetch_timeout):
                source = await detect_source(platform, endpoints)
        except TimeoutError:
            raise FetchFailed("no user data source found in time") from None
        remaining = max(config.fetch_timeout - (loop.time() - started), 0.001)
        result = await provision(dataclasses.replace(config, fetch_timeout=remaining), source)
    except FetchFailed as exc:
        print(f"failed to retrieve cloud config: {exc}", file=sys.stderr)
        return 1
    except InvalidInput as exc:
        print(f"failed to process initdata ({exc.field}): {exc}", file=sys.stderr)
        return 1
    except (AdaptorError, OSError) as exc:
        print(f"process-user-data: {exc}", file=sys.stderr)
        return 1
    logger.info(
        "provisioned from %s: wrote %s; refused %s; initdata digest %s",
        result.source or "nothing (cloud-init)",
        ", ".join(result.written) or "nothing",
        ", ".join(result.refused) or "nothing",
        result.digest,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "version":
        print(f"process-user-data version {__version__}")
        return 0
    if args.command == "provision-files":
        return asyncio.run(_provision_files(args))
    parser.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
