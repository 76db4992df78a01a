"""``cloud-api-adaptor doctor``: the provider's ``verify()``, printed as a table."""

from __future__ import annotations

from typing import Any

from cloud_api_adaptor.daemon import build_provider
from cloud_api_adaptor.errors import AdaptorError
from cloud_api_adaptor.provider import CheckResult
from cloud_api_adaptor.settings import Settings


def format_table(results: list[CheckResult]) -> str:
    width = max([len(r.name) for r in results] + [5])
    lines = [f"{'check'.ljust(width)}  result  detail"]
    for r in results:
        lines.append(f"{r.name.ljust(width)}  {'ok' if r.ok else 'FAIL':6}  {r.detail}")
    return "\n".join(lines)


async def doctor(settings: Settings, provider_config: Any) -> int:
    try:
        provider = build_provider(settings, provider_config)
    except AdaptorError as exc:
        print(format_table([CheckResult("configuration", False, str(exc))]))
        return 1
    try:
        results = [CheckResult("configuration", True, f"provider {settings.provider}")]
        try:
            results += list(await provider.verify())
        except AdaptorError as exc:
            results.append(CheckResult("verify", False, str(exc)))
    finally:
        await provider.aclose()
    print(format_table(results))
    return 0 if all(r.ok for r in results) else 1
