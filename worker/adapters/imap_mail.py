"""IMAP mailbox sync with imapclient: UID-based incremental fetch per folder, UIDVALIDITY-aware.

Blocking (imapclient is synchronous): the worker runs it in a thread. Each fetched message is parsed by
the core (luna/channels/email.py) into a normalised inbound event keyed by its Message-ID, so fetching
a message twice (a UIDVALIDITY reset, a copy in another folder) stores it once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imapclient import IMAPClient

from luna.channels.email import parse


@dataclass
class FetchedMail:
    folder: str
    uid: int
    payload: dict


@dataclass
class FolderResult:
    folder: str
    uidvalidity: int
    last_uid: int
    messages: list[FetchedMail] = field(default_factory=list)
    reset: bool = False


def sync(host: str, port: int, username: str, password: str, folders: list[str], state: dict, *,
         mailbox_address: str, ssl: bool = True, starttls: bool = False, timeout: float = 30.0,
         batch: int = 200) -> list[FolderResult]:
    """Fetch what is new in each folder since `state` ({folder: {"uidvalidity", "uid"}})."""
    results = []
    with IMAPClient(host, port=port, ssl=ssl, timeout=timeout) as client:
        if starttls:
            client.starttls()
        client.login(username, password)
        for folder in folders:
            info = client.select_folder(folder, readonly=True)
            uidvalidity = int(info[b"UIDVALIDITY"])
            previous = state.get(folder) or {}
            reset = previous.get("uidvalidity") not in (None, uidvalidity)
            last = 0 if reset else int(previous.get("uid", 0))
            # "last+1:*" always includes the highest UID, even when it is not new: filter.
            uids = sorted(u for u in client.search(["UID", f"{last + 1}:*"]) if u > last)
            result = FolderResult(folder, uidvalidity, last, reset=reset)
            for start in range(0, len(uids), batch):
                chunk = uids[start:start + batch]
                for uid, data in sorted(client.fetch(chunk, ["BODY.PEEK[]"]).items()):
                    raw = data.get(b"BODY[]")
                    if raw is None:
                        continue
                    result.messages.append(FetchedMail(folder, uid, parse(raw, mailbox_address, folder)))
                    result.last_uid = max(result.last_uid, uid)
            results.append(result)
    return results
