"""NOTRACK rules for the tunnel's UDP flow, with iptables (raw table) or nftables.

Why: the VXLAN packets between the worker and a pod VM need no connection
tracking, and a conntrack entry for them can be matched by NAT rules of
kube-proxy or the CNI.  The Go adaptor adds, in the ``raw`` table, chains
``peerpod-OUTPUT`` (jumped to from OUTPUT) and ``peerpod-PREROUTING`` (from
PREROUTING) holding one rule per pod, commented ``peerpod [vni:<id>]``.  The
iptables backend keeps exactly that layout, so rules left by a Go adaptor are
cleaned up by ours after an upgrade.  A node without the iptables command gets
the same rules in an nftables table of its own (``ip peerpod``).

Backends are synchronous: they run their command inside the target namespace
on a ``netns.run_in_netns`` thread (a child process inherits the thread's
namespace).  A process-wide lock serialises the read-modify-write sequences
(chain empty? then delete it), as the Go adaptor's global mutex does.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import shlex
import shutil
import subprocess
import threading
from collections.abc import Callable
from typing import Any, Protocol

from cloud_api_adaptor.errors import FailedPrecondition

logger = logging.getLogger(__name__)

COMMENT_PREFIX = "peerpod [vni:"
IPT_CHAINS = (("peerpod-OUTPUT", "OUTPUT", "-d"), ("peerpod-PREROUTING", "PREROUTING", "-s"))
NFT_TABLE = "peerpod"
NFT_CHAINS = (("output", "output", "daddr"), ("prerouting", "prerouting", "saddr"))
_TIMEOUT = 30.0
_LOCK = threading.Lock()


def comment_for(vni: int) -> str:
    return f"{COMMENT_PREFIX}{vni}]"


class NotrackBackend(Protocol):
    """Adds and removes the NOTRACK rules of one tunnel in the current namespace (blocking)."""

    name: str

    def ensure(self, vni: int, peer: ipaddress.IPv4Address, port: int) -> None:
        """Exactly one rule per direction for ``vni``: to/from ``peer``, UDP dport ``port``."""

    def remove(self, vni: int) -> None:
        """Remove the rules for ``vni``; drop the chains or table once empty."""

    def rules(self) -> list[str]:
        """Every rule of ours in this namespace, as text (diagnostics and tests)."""


def detect_notrack(which: Callable[[str], str | None] = shutil.which) -> NotrackBackend:
    """iptables if the node has it (the Go layout), else nftables."""
    if which("iptables"):
        return IptablesNotrack()
    if which("nft"):
        return NftablesNotrack()
    raise FailedPrecondition(
        "neither iptables nor nft is installed: cannot add NOTRACK rules for the pod network tunnel"
    )


def _run(
    argv: list[str], *, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=_TIMEOUT, check=False
        )
    except FileNotFoundError as exc:
        raise FailedPrecondition(f"{argv[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise FailedPrecondition(f"{shlex.join(argv)} did not finish within {_TIMEOUT:.0f}s") from exc
    if check and done.returncode != 0:
        raise FailedPrecondition(f"{shlex.join(argv)} failed: {done.stderr.strip() or done.returncode}")
    return done


class IptablesNotrack:
    """The Go adaptor's layout in the ``raw`` table.

    One ``iptables-save`` to read and one ``iptables-restore --noflush`` to
    apply all changes atomically: a dozen single ``iptables`` calls would each
    re-read the whole ruleset.
    """

    name = "iptables"

    def __init__(self, binary: str = "iptables") -> None:
        self._binary = binary

    def _read(self) -> tuple[set[str], list[list[str]]]:
        """The raw table's chain names and its rules as ``-A`` token lists."""
        done = _run([f"{self._binary}-save", "-t", "raw"], check=False)
        chains: set[str] = set()
        rules: list[list[str]] = []
        if done.returncode != 0:  # no raw table yet
            return chains, rules
        for line in done.stdout.splitlines():
            if line.startswith(":"):
                chains.add(line[1:].split()[0])
            elif line.startswith("-A "):
                rules.append(shlex.split(line))
        return chains, rules

    def _apply(self, lines: list[str]) -> None:
        if lines:
            script = "*raw\n" + "\n".join(lines) + "\nCOMMIT\n"
            _run([f"{self._binary}-restore", "-w", "5", "--noflush"], stdin=script)

    def _plan_ensure(self, vni: int, peer: ipaddress.IPv4Address, port: int) -> list[str]:
        comment = comment_for(vni)
        chains, rules = self._read()
        lines = []
        for chain, base, flag in IPT_CHAINS:
            if chain not in chains:
                lines.append(f"-N {chain}")
            if ["-A", base, "-j", chain] not in rules:
                lines.append(f"-A {base} -j {chain}")
            # The order iptables-save prints, so an unchanged rule compares equal.
            wanted = ["-A", chain, flag, f"{peer}/32", "-p", "udp", "-m", "comment", "--comment", comment]
            wanted += ["-m", "udp", "--dport", str(port), "-j", "NOTRACK"]
            ours = [r for r in rules if r[1] == chain and _comment_of(r) == comment]
            if ours == [wanted]:
                continue
            lines += [_restore_line(["-D", *r[1:]]) for r in ours]  # stale: another peer or port
            lines.append(_restore_line(wanted))
        return lines

    def _plan_remove(self, vni: int) -> list[str]:
        comment = comment_for(vni)
        chains, rules = self._read()
        lines = []
        for chain, base, _ in IPT_CHAINS:
            if chain not in chains:
                continue
            in_chain = [r for r in rules if r[1] == chain]
            ours = [r for r in in_chain if _comment_of(r) == comment]
            lines += [_restore_line(["-D", *r[1:]]) for r in ours]
            if len(ours) == len(in_chain):
                lines += [f"-D {base} -j {chain}"] * rules.count(["-A", base, "-j", chain])
                lines.append(f"-X {chain}")
        return lines

    def ensure(self, vni: int, peer: ipaddress.IPv4Address, port: int) -> None:
        with _LOCK:
            _twice(lambda: self._apply(self._plan_ensure(vni, peer, port)))

    def remove(self, vni: int) -> None:
        with _LOCK:
            _twice(lambda: self._apply(self._plan_remove(vni)))

    def rules(self) -> list[str]:
        chains, rules = self._read()
        out = [f"chain {chain}" for chain, _, _ in IPT_CHAINS if chain in chains]
        for r in rules:
            if r[1] in {c for c, _, _ in IPT_CHAINS} or (len(r) == 4 and r[3].startswith("peerpod-")):
                out.append(shlex.join(r))
        return out


class NftablesNotrack:
    """The same rules in a table of our own, for nodes without the iptables command."""

    name = "nftables"

    def __init__(self, binary: str = "nft") -> None:
        self._binary = binary

    def _table(self) -> tuple[set[str], list[dict[str, Any]]] | None:
        """The table's chain names and rules (JSON objects), or None if the table does not exist."""
        done = _run([self._binary, "-j", "list", "table", "ip", NFT_TABLE], check=False)
        if done.returncode != 0:
            return None
        try:
            items = json.loads(done.stdout)["nftables"]
        except (ValueError, KeyError, TypeError) as exc:
            raise FailedPrecondition(f"nft -j list table ip {NFT_TABLE}: unreadable output") from exc
        chains = {i["chain"]["name"] for i in items if isinstance(i, dict) and "chain" in i}
        return chains, [i["rule"] for i in items if isinstance(i, dict) and "rule" in i]

    def _apply(self, lines: list[str]) -> None:
        if lines:
            _run([self._binary, "-f", "-"], stdin="\n".join(lines) + "\n")

    def _plan_ensure(self, vni: int, peer: ipaddress.IPv4Address, port: int) -> list[str]:
        comment = comment_for(vni)
        chains, rules = self._table() or (set(), [])
        lines = []
        if chains != {c for c, _, _ in NFT_CHAINS}:
            lines.append(f"table ip {NFT_TABLE} {{")
            for chain, hook, _ in NFT_CHAINS:
                lines.append(f"  chain {chain} {{ type filter hook {hook} priority raw; policy accept; }}")
            lines.append("}")
        for chain, _, field in NFT_CHAINS:
            ours = [r for r in rules if r.get("chain") == chain and r.get("comment") == comment]
            wanted = {("ip", field, str(peer)), ("udp", "dport", port)}
            if len(ours) == 1 and _nft_matches(ours[0]) == wanted:
                continue
            lines += [f"delete rule ip {NFT_TABLE} {chain} handle {r['handle']}" for r in ours]
            lines.append(
                f"add rule ip {NFT_TABLE} {chain} ip {field} {peer} udp dport {port} notrack "
                f'comment "{comment}"'
            )
        return lines

    def _plan_remove(self, vni: int) -> list[str]:
        comment = comment_for(vni)
        table = self._table()
        if table is None:
            return []
        _, rules = table
        ours = [r for r in rules if r.get("comment") == comment]
        if len(ours) == len(rules):
            return [f"delete table ip {NFT_TABLE}"]
        return [f"delete rule ip {NFT_TABLE} {r['chain']} handle {r['handle']}" for r in ours]

    def ensure(self, vni: int, peer: ipaddress.IPv4Address, port: int) -> None:
        with _LOCK:
            _twice(lambda: self._apply(self._plan_ensure(vni, peer, port)))

    def remove(self, vni: int) -> None:
        with _LOCK:
            _twice(lambda: self._apply(self._plan_remove(vni)))

    def rules(self) -> list[str]:
        table = self._table()
        if table is None:
            return []
        out = [f"table ip {NFT_TABLE}"]
        for r in table[1]:
            matches = " ".join(
                f"{proto} {fld} {value}" for proto, fld, value in sorted(_nft_matches(r), key=str)
            )
            out.append(f"{r.get('chain')}: {matches} notrack comment {r.get('comment', '')!r}")
        return out


def _twice(step: Callable[[], None]) -> None:
    """Read-plan-apply again if another process changed the ruleset between our read and write."""
    try:
        step()
    except FailedPrecondition as exc:
        logger.info("retrying NOTRACK rule change once: %s", exc)
        step()


def _restore_line(tokens: list[str]) -> str:
    # iptables-restore understands double quotes only.
    return " ".join(f'"{t}"' if any(c.isspace() for c in t) else t for t in tokens)


def _comment_of(rule: list[str]) -> str | None:
    for i, token in enumerate(rule[:-1]):
        if token == "--comment":
            return rule[i + 1]
    return None


def _nft_matches(rule: dict[str, Any]) -> set[tuple[str, str, object]]:
    """The ``payload == value`` matches of a rule: {("ip", "daddr", "192.0.2.2"), ("udp", "dport", 4789)}."""
    out: set[tuple[str, str, object]] = set()
    for expr in rule.get("expr", ()):
        match = expr.get("match") if isinstance(expr, dict) else None
        if not isinstance(match, dict) or match.get("op") not in ("==", None):
            continue
        payload = match.get("left", {}).get("payload") if isinstance(match.get("left"), dict) else None
        if isinstance(payload, dict):
            out.add((str(payload.get("protocol")), str(payload.get("field")), match.get("right")))
    return out
