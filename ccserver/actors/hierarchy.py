"""The account tree and the indexes that find an account from what a NAS sends.

The operator is the root; resellers nest to any depth; customers, agents and providers are leaves.
A parent exists before its child and a move never goes under the moved account's own subtree, so
the tree has no cycle by construction (asserted).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

from ccserver.actors.account import PARENT_KINDS, Account, AccountKind, Status, invalidate_chains

IpKey = tuple[int, int, int]  # (ip version, network address as int, prefix length)


class HierarchyError(ValueError):
    """A change the tree cannot take (unknown parent, duplicate number, a leaf as parent...)."""


def _ip_key(text: str) -> IpKey:
    network = ipaddress.ip_network(text.strip(), strict=False)
    return (network.version, int(network.network_address), network.prefixlen)


class IpIndex:
    """Exact addresses and CIDR blocks; the most specific block wins."""

    __slots__ = ("_by_key", "_lengths")

    def __init__(self) -> None:
        self._by_key: dict[IpKey, Account] = {}
        self._lengths: dict[int, set[int]] = {4: set(), 6: set()}

    def put(self, text: str, account: Account) -> None:
        key = _ip_key(text)
        existing = self._by_key.get(key)
        if existing is not None and existing is not account:
            raise HierarchyError(f"address {text} already belongs to account {existing.number}")
        self._by_key[key] = account
        self._lengths[key[0]].add(key[2])

    def remove(self, text: str, account: Account) -> None:
        key = _ip_key(text)
        if self._by_key.get(key) is account:
            del self._by_key[key]

    def find(self, text: str) -> Account | None:
        try:
            address = ipaddress.ip_address(text.strip())
        except ValueError:
            return None
        version = address.version
        bits = 32 if version == 4 else 128
        value = int(address)
        for length in sorted(self._lengths[version], reverse=True):
            mask = ((1 << length) - 1) << (bits - length) if length else 0
            account = self._by_key.get((version, value & mask, length))
            if account is not None:
                return account
        return None


class Hierarchy:
    def __init__(self, operator_id: int = 1, operator_number: str = "operator") -> None:
        self.operator = Account(operator_id, operator_number, AccountKind.OPERATOR, None)
        self.by_id: dict[int, Account] = {operator_id: self.operator}
        self.by_number: dict[str, Account] = {operator_number: self.operator}
        self.by_sip: dict[str, Account] = {}
        self.by_ani: dict[str, Account] = {}
        self.by_ip = IpIndex()

    def __len__(self) -> int:
        return len(self.by_id)

    def __iter__(self) -> Iterator[Account]:
        return iter(self.by_id.values())

    def get(self, account_id: int) -> Account | None:
        return self.by_id.get(account_id)

    def find_number(self, number: str) -> Account | None:
        return self.by_number.get(number)

    def add(self, account: Account) -> Account:
        parent = account.parent
        if parent is None or self.by_id.get(parent.id) is not parent:
            raise HierarchyError("parent is not in the hierarchy")
        if parent.kind not in PARENT_KINDS:
            raise HierarchyError(f"a {parent.kind.value} cannot have sub-accounts")
        if account.id in self.by_id:
            raise HierarchyError(f"account id {account.id} exists")
        if account.number in self.by_number:
            raise HierarchyError(f"account number {account.number} exists")
        self._check_credentials_free(account)
        self.by_id[account.id] = account
        self.by_number[account.number] = account
        self.index_credentials(account)
        # Cached now rather than at the account's first call: built during the start-up load, it
        # is not a new long-lived object for the cycle collector to count while calls run.
        account.chain_tuple()
        return account

    def add_restored(self, accounts: Iterable[Account]) -> None:
        """`add` of many accounts, for the start-up load of a million: accounts from
        `Account.restored` (their chains cached), each added before the next is drawn from
        `accounts`, so that a generator of them may look its parents up in `by_id`.

        The ledger's keys make ids and numbers unique, so that is checked once, at the end,
        rather than for each account. Credentials are not unique there (caller IDs, addresses),
        so an account that has any goes through `add`'s checks.
        """
        by_id = self.by_id
        by_number = self.by_number
        ids, numbers = len(by_id), len(by_number)
        added = 0
        for account in accounts:
            parent = account.parent
            assert parent is not None and by_id.get(parent.id) is parent, "parents first"
            if account.sip_username or account.caller_ids or account.ip_addresses:
                self._check_credentials_free(account)
                self.index_credentials(account)
            by_id[account.id] = account
            by_number[account.number] = account
            added += 1
        if len(by_id) != ids + added or len(by_number) != numbers + added:
            raise HierarchyError("an account id or number came twice")

    def _check_credentials_free(self, account: Account) -> None:
        self.check_credentials_free(
            account.sip_username, account.caller_ids, account.ip_addresses, account
        )

    def check_credentials_free(
        self,
        sip_username: str | None,
        caller_ids: tuple[str, ...],
        ip_addresses: tuple[str, ...],
        owner: Account | None,
    ) -> None:
        """Raise HierarchyError if an account other than `owner` holds one of these."""
        if sip_username:
            holder = self.by_sip.get(sip_username)
            if holder is not None and holder is not owner:
                raise HierarchyError(f"SIP username {sip_username} is taken")
        for ani in caller_ids:
            holder = self.by_ani.get(ani)
            if holder is not None and holder is not owner:
                raise HierarchyError(f"caller ID {ani} belongs to account {holder.number}")
        for text in ip_addresses:
            holder = self.by_ip.find(text)
            if holder is not None and holder is not owner:
                exact = _ip_key(text) in self.by_ip._by_key
                if exact:
                    raise HierarchyError(f"address {text} belongs to account {holder.number}")

    def index_credentials(self, account: Account) -> None:
        if account.sip_username:
            self.by_sip[account.sip_username] = account
        for ani in account.caller_ids:
            self.by_ani[ani] = account
        for text in account.ip_addresses:
            self.by_ip.put(text, account)

    def unindex_credentials(self, account: Account) -> None:
        if account.sip_username and self.by_sip.get(account.sip_username) is account:
            del self.by_sip[account.sip_username]
        for ani in account.caller_ids:
            if self.by_ani.get(ani) is account:
                del self.by_ani[ani]
        for text in account.ip_addresses:
            self.by_ip.remove(text, account)

    def set_credentials(
        self,
        account: Account,
        *,
        sip_username: str | None,
        caller_ids: tuple[str, ...],
        ip_addresses: tuple[str, ...],
    ) -> None:
        """Replace the identifiers a NAS may find this account by, all or nothing."""
        for text in ip_addresses:
            _ip_key(text)  # raises ValueError on a bad address before anything changes
        self.check_credentials_free(sip_username, caller_ids, ip_addresses, account)
        self.unindex_credentials(account)
        account.sip_username = sip_username
        account.caller_ids = caller_ids
        account.ip_addresses = ip_addresses
        self.index_credentials(account)

    def remove(self, account: Account) -> None:
        """Soft delete: the account leaves every index; its history stays in the ledger."""
        assert account.parent is not None, "the operator cannot be deleted"
        assert account.calls == 0, "end the account's calls first"
        if any(child.parent is account for child in self.by_id.values()):
            raise HierarchyError("account has sub-accounts")
        self.unindex_credentials(account)
        del self.by_id[account.id]
        del self.by_number[account.number]
        account.status = Status.DELETED
        account.parent.children -= 1

    def move(self, account: Account, new_parent: Account) -> None:
        if new_parent.kind not in PARENT_KINDS:
            raise HierarchyError(f"a {new_parent.kind.value} cannot have sub-accounts")
        node: Account | None = new_parent
        while node is not None:
            if node is account:
                raise HierarchyError("an account cannot move under its own subtree")
            node = node.parent
        if account.calls:
            raise HierarchyError("account has calls in progress")
        old_parent = account.parent
        assert old_parent is not None
        old_parent.children -= 1
        account.parent = new_parent
        invalidate_chains()
        new_parent.children += 1
        self._renumber_depths(account)
        self.assert_acyclic(account)

    def _renumber_depths(self, root: Account) -> None:
        stack = [root]
        children_of: dict[int, list[Account]] = {}
        for other in self.by_id.values():
            if other.parent is not None:
                children_of.setdefault(other.parent.id, []).append(other)
        while stack:
            node = stack.pop()
            assert node.parent is not None
            node.depth = node.parent.depth + 1
            stack.extend(children_of.get(node.id, ()))

    def assert_acyclic(self, account: Account) -> None:
        seen = 0
        node: Account | None = account
        while node is not None:
            seen += 1
            assert seen <= len(self.by_id), "cycle in the account hierarchy"
            node = node.parent

    def is_ancestor(self, ancestor: Account, account: Account) -> bool:
        node: Account | None = account
        while node is not None:
            if node is ancestor:
                return True
            node = node.parent
        return False
