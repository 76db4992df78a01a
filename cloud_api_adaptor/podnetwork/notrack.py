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
    """The Go adaptor's layout in the ``raw`` table."""

    name = "iptables"

    def __init__(self, binary: str = "iptables") -> None:
        self._binary = binary

    def _ipt(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([self._binary, "-w", "5", "-t", "raw", *args], check=check)

    def _chain_rules(self, chain: str) -> list[list[str]] | None:
        """The chain's rules as ``-A`` argument lists, or None if the chain does not exist."""
        done = self._ipt("-S", chain, check=False)
        if done.returncode != 0:
            return None
        return [shlex.split(line) for line in done.stdout.splitlines() if line.startswith("-A ")]

    def ensure(self, vni: int, peer: ipaddress.IPv4Address, port: int) -> None:
        comment = comment_for(vni)
        with _LOCK:
            for chain, base, flag in IPT_CHAINS:
                rules = self._chain_rules(chain)
                if rules is None:
                    self._ipt("-N", chain)
                    rules = []
                if self._ipt("-C", base, "-j", chain, check=False).returncode != 0:
                    self._ipt("-A", base, "-j", chain)
                spec = [flag, f"{peer}/32", "-p", "udp", "-m", "comment", "--comment", comment]
                spec += ["-m", "udp", "--dport", str(port), "-j", "NOTRACK"]
                ours = [r for r in rules if _comment_of(r) == comment]
                if len(ours) == 1 and self._ipt("-C", chain, *spec, check=False).returncode == 0:
                    continue
                for rule in ours:  # stale: another peer or port from an earlier attempt
                    self._ipt("-D", *rule[1:], check=False)
                self._ipt("-A", chain, *spec)

    def remove(self, vni: int) -> None:
        comment = comment_for(vni)
        with _LOCK:
            for chain, base, _ in IPT_CHAINS:
                rules = self._chain_rules(chain)
                if rules is None:
                    continue
                for rule in rules:
                    if _comment_of(rule) == comment:
                        self._ipt("-D", *rule[1:], check=False)
                if self._chain_rules(chain):
                    continue
                while self._ipt("-C", base, "-j", chain, check=False).returncode == 0:
                    self._ipt("-D", base, "-j", chain)
                self._ipt("-X", chain, check=False)

    def rules(self) -> list[str]:
        out = []
        for chain, base, _ in IPT_CHAINS:
            rules = self._chain_rules(chain)
            if rules is None:
                continue
            out += [f"chain {chain}"]
            out += [shlex.join(r) for r in rules]
            if self._ipt("-C", base, "-j", chain, check=False).returncode == 0:
                out.append(f"jump {base} -> {chain}")
        return out


class NftablesNotrack:
    """The same rules in a table of our own, for nodes without the iptables command."""

    name = "nftables"

    def __init__(self, binary: str = "nft") -> None:
        self._binary = binary

    def _table(self) -> list[dict[str, Any]] | None:
        """The table's rules (JSON objects), or None if the table does not exist."""
        done = _run([self._binary, "-j", "list", "table", "ip", NFT_TABLE], check=False)
        if done.returncode != 0:
            return None
        try:
            items = json.loads(done.stdout)["nftables"]
        except (ValueError, KeyError, TypeError) as exc:
            raise FailedPrecondition(f"nft -j list table ip {NFT_TABLE}: unreadable output") from exc
        return [item["rule"] for item in items if isinstance(item, dict) and "rule" in item]

    def _apply(self, script: str) -> None:
        _run([self._binary, "-f", "-"], stdin=script)

    def ensure(self, vni: int, peer: ipaddress.IPv4Address, port: int) -> None:
        comment = comment_for(vni)
        with _LOCK:
            lines = [f"table ip {NFT_TABLE} {{"]
            for chain, hook, _ in NFT_CHAINS:
                lines.append(f"  chain {chain} {{ type filter hook {hook} priority raw; policy accept; }}")
            lines.append("}")
            self._apply("\n".join(lines) + "\n")
            rules = self._table() or []
            script = []
            for chain, _, field in NFT_CHAINS:
                ours = [r for r in rules if r.get("chain") == chain and r.get("comment") == comment]
                wanted = {("ip", field, str(peer)), ("udp", "dport", port)}
                if len(ours) == 1 and _nft_matches(ours[0]) == wanted:
                    continue
                script += [f"delete rule ip {NFT_TABLE} {chain} handle {r['handle']}" for r in ours]
                script.append(
                    f"add rule ip {NFT_TABLE} {chain} ip {field} {peer} udp dport {port} notrack "
                    f'comment "{comment}"'
                )
            if script:
                self._apply("\n".join(script) + "\n")

    def remove(self, vni: int) -> None:
        comment = comment_for(vni)
        with _LOCK:
            rules = self._table()
            if rules is None:
                return
            ours = [r for r in rules if r.get("comment") == comment]
            if len(ours) == len(rules):
                self._apply(f"delete table ip {NFT_TABLE}\n")
                return
            script = [f"delete rule ip {NFT_TABLE} {r['chain']} handle {r['handle']}" for r in ours]
            if script:
                self._apply("\n".join(script) + "\n")

    def rules(self) -> list[str]:
        rules = self._table()
        if rules is None:
            return []
        out = [f"table ip {NFT_TABLE}"]
        for r in rules:
            matches = " ".join(
                f"{proto} {fld} {value}" for proto, fld, value in sorted(_nft_matches(r), key=str)
            )
            out.append(f"{r.get('chain')}: {matches} notrack comment {r.get('comment', '')!r}")
        return out


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
