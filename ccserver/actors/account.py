"""The account actor: the single owner of one account's live state.

Nothing outside this class writes a balance, a hold, a slot or a CPS token; the engine calls its
methods. Money is int micro-units; time inside is int milliseconds (`now_ms`).
"""

from __future__ import annotations

import enum
import heapq
import ipaddress
from collections import deque
from typing import TYPE_CHECKING

from ccserver.rating.prefix_index import PrefixIndex
from ccserver.rating.tariff import PPM, SECONDS_PER_MINUTE, Rate, RateGroup

if TYPE_CHECKING:
    from ccserver.actors.session import LevelCharge

# Exposure accrues as price-per-minute numerators (micro-units * PPM per minute) times
# milliseconds; dividing by this gives micro-units.
EXPOSURE_DENOMINATOR = SECONDS_PER_MINUTE * PPM * 1000
CPS_LIMIT_MAX = 100_000
# Heaps of timed entries keyed by a session's number (an account's young calls, the engine's hold
# expiries) hold `when_ms << NUM_BITS | num`: one int, which sorts as (when, num) did as a tuple,
# and which the cycle collector never tracks. A tuple per call, alive for as long as the call or
# its hold, was most of what every young collection walked.
NUM_BITS = 64
NUM_MASK = (1 << NUM_BITS) - 1


class AccountKind(enum.StrEnum):
    OPERATOR = "operator"
    RESELLER = "reseller"
    CUSTOMER = "customer"
    AGENT = "agent"
    PROVIDER = "provider"


class Status(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    DELETED = "deleted"


class Billing(enum.StrEnum):
    PREPAID = "prepaid"
    POSTPAID = "postpaid"


class CliPolicy(enum.StrEnum):
    ANY = "any"  # any caller ID
    LISTED = "listed"  # Calling-Station-Id must be in the account's caller_ids


_POSTPAID = Billing.POSTPAID
PARENT_KINDS = frozenset({AccountKind.OPERATOR, AccountKind.RESELLER})


def _floor_of(billing: Billing, credit_limit_micros: int) -> int:
    return -credit_limit_micros if billing is _POSTPAID else 0


# Chains are cached on the accounts; a move anywhere bumps this, which invalidates them all.
_chain_epoch = 0


def invalidate_chains() -> None:
    """Call after any change of an account's parent (Hierarchy.move)."""
    global _chain_epoch
    _chain_epoch += 1


class CpsWindow:
    """Admit at most `limit` calls in any one-second window (a burst of `limit` at once).

    A ring of the last `limit` admission times: a call is admitted only if the oldest of them is
    at least one second old. That is a token bucket of one second of burst whose refill is paced
    by the admissions themselves, so no window of one second ever sees more than `limit`.
    """

    __slots__ = ("_ring", "limit")

    def __init__(self, limit: int) -> None:
        assert 0 < limit <= CPS_LIMIT_MAX
        self.limit = limit
        self._ring: deque[int] = deque(maxlen=limit)

    def can_admit(self, now_ms: int) -> bool:
        ring = self._ring
        return len(ring) < self.limit or ring[0] <= now_ms - 1000

    def admit(self, now_ms: int) -> None:
        assert self.can_admit(now_ms)
        self._ring.append(now_ms)


class Account:
    """One account of the hierarchy and its live state."""

    __slots__ = (
        "_billing",
        "_chain",
        "_chain_epoch",
        "_credit_limit_micros",
        "_young",
        "active_base_micros",
        "active_charges",
        "balance_micros",
        "blocked",
        "caller_ids",
        "calls",
        "children",
        "cli_policy",
        "cps",
        "cps_window",
        "currency",
        "deadline_margin",
        "deadline_ms",
        "depth",
        "expires_at",
        "floor_micros",
        "id",
        "ip_addresses",
        "kind",
        "mature_rate_sum",
        "mature_rate_time_sum",
        "max_concurrent",
        "number",
        "parent",
        "password",
        "pending_hold_micros",
        "personal_rates",
        "pin",
        "rate_group",
        "sip_username",
        "status",
        "tech_prefix",
        "young_rate_sum",
    )

    def __init__(
        self,
        id: int,
        number: str,
        kind: AccountKind,
        parent: Account | None,
        status: Status = Status.ACTIVE,
        billing: Billing = Billing.PREPAID,
        credit_limit_micros: int = 0,
        balance_micros: int = 0,
        currency: str = "USD",
        rate_group: RateGroup | None = None,
        max_concurrent: int = 0,
        cps: int = 0,
        expires_at: float | None = None,
        password: str | None = None,
        pin: str | None = None,
        sip_username: str | None = None,
        ip_addresses: tuple[str, ...] = (),
        tech_prefix: str = "",
        caller_ids: tuple[str, ...] = (),
        cli_policy: CliPolicy = CliPolicy.ANY,
    ) -> None:
        assert (parent is None) == (kind is AccountKind.OPERATOR), "only the operator is a root"
        assert parent is None or parent.kind in PARENT_KINDS, "only resellers have children"
        self._fill(
            id,
            number,
            kind,
            parent,
            status,
            billing,
            credit_limit_micros,
            balance_micros,
            currency,
            rate_group,
            max_concurrent,
            cps,
            expires_at,
            password,
            pin,
            sip_username,
            ip_addresses,
            tech_prefix,
            caller_ids,
            cli_policy,
        )

    @classmethod
    def restored(
        cls,
        id: int,
        number: str,
        kind: AccountKind,
        parent: Account,
        status: Status,
        billing: Billing,
        credit_limit_micros: int,
        balance_micros: int,
        currency: str,
        rate_group: RateGroup | None,
        max_concurrent: int,
        cps: int,
        expires_at: float | None,
        password: str | None,
        pin: str | None,
        sip_username: str | None,
        ip_addresses: tuple[str, ...],
        tech_prefix: str,
        caller_ids: tuple[str, ...],
        cli_policy: CliPolicy,
    ) -> Account:
        """`Account(...)` of a child account with every field given by position, its chain
        cached: for the start-up load of a million accounts (no keyword matching, no defaults to
        fill)."""
        self = cls(
            id,
            number,
            kind,
            parent,
            status,
            billing,
            credit_limit_micros,
            balance_micros,
            currency,
            rate_group,
            max_concurrent,
            cps,
            expires_at,
            password,
            pin,
            sip_username,
            ip_addresses,
            tech_prefix,
            caller_ids,
            cli_policy,
        )
        # The chain, cached as `chain_tuple` would (the parent's was cached when it was added;
        # the root's is empty).
        self._chain = (self,) if parent.parent is None else (self, *parent.chain_tuple())
        self._chain_epoch = _chain_epoch
        return self

    def _fill(
        self,
        id: int,
        number: str,
        kind: AccountKind,
        parent: Account | None,
        status: Status,
        billing: Billing,
        credit_limit_micros: int,
        balance_micros: int,
        currency: str,
        rate_group: RateGroup | None,
        max_concurrent: int,
        cps: int,
        expires_at: float | None,
        password: str | None,
        pin: str | None,
        sip_username: str | None,
        ip_addresses: tuple[str, ...],
        tech_prefix: str,
        caller_ids: tuple[str, ...],
        cli_policy: CliPolicy,
    ) -> None:
        """Every slot, from `__init__` and `restored` alike (the chain is left to them)."""
        assert credit_limit_micros >= 0
        assert max_concurrent >= 0
        assert 0 <= cps <= CPS_LIMIT_MAX
        self.id = id
        self.number = number
        self.kind: AccountKind = kind
        self.parent = parent
        self.depth: int = 0 if parent is None else parent.depth + 1
        self.children = 0
        self.status = status
        self._billing = billing
        self._credit_limit_micros = credit_limit_micros
        # Derived from billing and the credit limit, whose setters keep it: never assigned else.
        self.floor_micros = _floor_of(billing, credit_limit_micros)
        self.balance_micros = balance_micros
        self.currency = currency
        self.rate_group = rate_group
        self.personal_rates: PrefixIndex[Rate] | None = None
        self.max_concurrent = max_concurrent
        self.cps = cps
        self.cps_window = CpsWindow(cps) if cps else None
        self.expires_at = expires_at
        self.blocked: PrefixIndex[bool] | None = None
        self.password = password
        self.pin = pin
        self.sip_username = sip_username
        self.ip_addresses = ip_addresses
        self.tech_prefix = tech_prefix
        self.caller_ids = caller_ids
        self.cli_policy = cli_policy
        # Live state. `calls` counts held and active calls of this account and all descendants.
        self.calls = 0
        self.pending_hold_micros = 0
        self.active_charges: dict[int, LevelCharge] = {}
        # Exposure of active calls: each costs its hold until it "matures" (its first billed
        # increment is used up), then accrues linearly at its per-minute price.
        self.active_base_micros = 0
        self.mature_rate_sum = 0
        self.mature_rate_time_sum = 0
        self.young_rate_sum = 0
        # A heap of mature_ms << NUM_BITS | session num, the charge found in active_charges;
        # None while the account has no active calls (most accounts, most of the time).
        self._young: list[int] | None = None
        # The depletion deadline the engine has scheduled for this account, if any, and how much
        # more the account may spend before it (see Engine._reschedule).
        self.deadline_ms: int | None = None
        self.deadline_margin = 0
        self._chain: tuple[Account, ...] = ()
        self._chain_epoch = -1
        if parent is not None:
            parent.children += 1

    def __repr__(self) -> str:
        return f"Account({self.number!r}, {self.kind.value}, balance={self.balance_micros})"

    # -- policy ---------------------------------------------------------------------------------

    # The floor (floor_micros) is read for every level of every call: it is a plain attribute,
    # kept by the setters of billing and the credit limit.
    @property
    def billing(self) -> Billing:
        return self._billing

    @billing.setter
    def billing(self, billing: Billing) -> None:
        self._billing = billing
        self.floor_micros = _floor_of(billing, self._credit_limit_micros)

    @property
    def credit_limit_micros(self) -> int:
        return self._credit_limit_micros

    @credit_limit_micros.setter
    def credit_limit_micros(self, credit_limit_micros: int) -> None:
        self._credit_limit_micros = credit_limit_micros
        self.floor_micros = _floor_of(self._billing, credit_limit_micros)

    @property
    def is_root(self) -> bool:
        return self.parent is None

    def chain(self) -> list[Account]:
        """This account and its ancestors below the operator, nearest first."""
        return list(self.chain_tuple())

    def chain_tuple(self) -> tuple[Account, ...]:
        """`chain()` as a tuple, cached until the next move anywhere in the hierarchy."""
        if self._chain_epoch == _chain_epoch:
            return self._chain
        levels = []
        node: Account | None = self
        while node is not None and node.parent is not None:
            levels.append(node)
            node = node.parent
        self._chain = tuple(levels)
        self._chain_epoch = _chain_epoch
        return self._chain

    def set_blocked_prefixes(self, prefixes: tuple[str, ...]) -> None:
        if not prefixes:
            self.blocked = None
            return
        index: PrefixIndex[bool] = PrefixIndex()
        for prefix in prefixes:
            index.put(prefix, True)
        self.blocked = index

    def blocked_prefixes(self) -> tuple[str, ...]:
        return tuple(sorted(self.blocked)) if self.blocked is not None else ()

    def set_cps(self, cps: int) -> None:
        assert 0 <= cps <= CPS_LIMIT_MAX
        self.cps = cps
        self.cps_window = CpsWindow(cps) if cps else None

    def lookup_rate(self, number: str) -> Rate | None:
        """A personal rate beats the rate group's (ASTPP's rule), each longest-prefix first."""
        if self.personal_rates is not None:
            rate = self.personal_rates.longest_match(number)
            if rate is not None:
                return rate
        if self.rate_group is None:
            return None
        return self.rate_group.index.longest_match(number)

    def password_matches(self, secret: str) -> bool:
        return (self.password is not None and secret == self.password) or (
            self.pin is not None and secret == self.pin
        )

    def ip_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(text, strict=False) for text in self.ip_addresses]

    # -- money ----------------------------------------------------------------------------------

    def exposure_micros(self, now_ms: int) -> int:
        """What this account's active calls have used or hold by now (a lower bound of cost)."""
        self._mature_until(now_ms)
        accrued = self.mature_rate_sum * now_ms - self.mature_rate_time_sum
        return self.active_base_micros + -(-accrued // EXPOSURE_DENOMINATOR)

    def available_micros(self, now_ms: int) -> int:
        """Funds left for a new call: balance - floor - holds - what active calls used."""
        # balance - floor - pending - exposure_micros(now_ms), inlined: this runs at every level
        # of every authorization and deadline. The accrual term is skipped when nothing accrues.
        young = self._young
        if young and young[0] >> NUM_BITS <= now_ms:
            self._mature_until(now_ms)
        available = (
            self.balance_micros
            - self.floor_micros
            - self.pending_hold_micros
            - self.active_base_micros
        )
        rate_sum = self.mature_rate_sum
        if rate_sum or self.mature_rate_time_sum:
            # minus the accrual rounded up
            available += (self.mature_rate_time_sum - rate_sum * now_ms) // EXPOSURE_DENOMINATOR
        return available

    def _mature_until(self, now_ms: int) -> None:
        young = self._young
        active = self.active_charges
        while young and young[0] >> NUM_BITS <= now_ms:
            entry = heapq.heappop(young)
            charge = active.get(entry & NUM_MASK)
            # Entries are removed lazily: the call may have ended, or been re-anchored (Interim-
            # Update) with an entry of its own for its new instant.
            if charge is not None and charge.mature_ms == entry >> NUM_BITS:
                self._mature(charge)

    def _mature(self, charge: LevelCharge) -> None:
        if charge.accrual_state != 1:
            return  # the call ended before it matured (lazy removal from the heap)
        charge.accrual_state = 2
        self.young_rate_sum -= charge.rate_factor
        self.mature_rate_sum += charge.rate_factor
        self.mature_rate_time_sum += charge.rate_factor * charge.mature_ms

    def add_active(self, charge: LevelCharge, now_ms: int) -> None:
        assert charge.session_id_num not in self.active_charges
        self.active_charges[charge.session_id_num] = charge
        self.active_base_micros += charge.hold_micros
        if charge.rate_factor:
            charge.accrual_state = 1
            self.young_rate_sum += charge.rate_factor
            if charge.mature_ms <= now_ms:
                self._mature(charge)
            else:
                young = self._young
                entry = charge.mature_ms << NUM_BITS | charge.session_id_num
                if young is None:
                    self._young = [entry]
                else:
                    heapq.heappush(young, entry)
                    if len(young) > 2 * len(self.active_charges) + 64:
                        self._compact_young()

    def remove_active(self, charge: LevelCharge) -> None:
        del self.active_charges[charge.session_id_num]
        self.active_base_micros -= charge.hold_micros
        assert self.active_base_micros >= 0
        if charge.accrual_state == 1:
            self.young_rate_sum -= charge.rate_factor
        elif charge.accrual_state == 2:
            self.mature_rate_sum -= charge.rate_factor
            self.mature_rate_time_sum -= charge.rate_factor * charge.mature_ms
        charge.accrual_state = 3
        assert self.young_rate_sum >= 0 and self.mature_rate_sum >= 0

    def end_active(self, charge: LevelCharge) -> None:
        """`remove_active` for a call that is over."""
        # remove_active, inlined (every level of every stop).
        active = self.active_charges
        del active[charge.session_id_num]
        self.active_base_micros -= charge.hold_micros
        assert self.active_base_micros >= 0
        state = charge.accrual_state
        if state == 1:
            self.young_rate_sum -= charge.rate_factor
        elif state == 2:
            self.mature_rate_sum -= charge.rate_factor
            self.mature_rate_time_sum -= charge.rate_factor * charge.mature_ms
        charge.accrual_state = 3
        assert self.young_rate_sum >= 0 and self.mature_rate_sum >= 0
        if not active:
            # Every entry left in the heap belongs to an ended call: drop them now rather than
            # when they come due, so that an account not called again does not keep them. A
            # fresh dict, too: an emptied one keeps the table it grew.
            self._young = None
            self.active_charges = {}

    def _compact_young(self) -> None:
        assert self._young is not None
        active = self.active_charges
        young = []
        for entry in self._young:
            charge = active.get(entry & NUM_MASK)
            if charge is None or charge.accrual_state != 1:
                continue  # ended, or matured already
            if charge.mature_ms == entry >> NUM_BITS:
                young.append(entry)
        heapq.heapify(young)
        self._young = young

    def funds_and_burn(self, now_ms: int) -> tuple[int, int]:
        """`(available_micros(now_ms), burn rate)`: the burn rate is the per-second price sum of
        the active calls, young ones included, as a numerator over EXPOSURE_DENOMINATOR per ms."""
        return self.available_micros(now_ms), self.mature_rate_sum + self.young_rate_sum

    def depletion_ms(self, now_ms: int) -> int | None:
        """The earliest instant the funds may reach the floor (never later than the truth).

        Calls still inside their first increment are assumed to accrue from now, which can only
        bring the instant forward; the engine re-checks exactly when it comes.
        """
        remaining, rate_sum = self.funds_and_burn(now_ms)
        if remaining <= 0:
            return now_ms
        if rate_sum == 0:
            return None
        # Rounded up, so that at the instant returned the funds are gone (or, with young calls,
        # the re-check finds a later instant): the scheduler always makes progress.
        return now_ms + -(-remaining * EXPOSURE_DENOMINATOR // rate_sum)

    def assert_invariants(self) -> None:
        assert self.calls >= 0
        assert self.pending_hold_micros >= 0
        assert self.active_base_micros >= 0
        assert self.young_rate_sum >= 0 and self.mature_rate_sum >= 0
