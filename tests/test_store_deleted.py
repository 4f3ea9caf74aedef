"""A store file deleted or replaced under a running gateway: nothing more is acknowledged.

Until stop 19 the gateway went on committing to the file it had open, which lived on unnamed,
and acknowledging the messages: all of it gone at the next start. The commit now checks that
the store's path still names the file it writes, before its COMMIT; and that its lock file is
still the one it holds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from pathlib import Path

import pytest

from adapters.push import PushReceiver
from adapters.runtime import run
from adapters.sqlite import Store, StoreError
from gateway import config as cfg
from gateway.correlate import CorrelationState
from gateway.decide import batch_keys, decide_batch, prepare
from gateway.envelope import EnvelopeReader
from gateway.pipeline import Pipeline
from gateway.ports import Delivery
from gateway.service import Service
from tests import helpers as h
from tests.brokers import readyz
from tests.helpers import push_to_jsonl
from tests.test_push import PUSH_BODY, free_port, post, status_code, when_up


async def commit_one(store: Store, body: bytes) -> int:
    """Decides and commits one message; returns how many events it emits."""
    batch = [prepare(h.raw(body), EnvelopeReader())]
    state: CorrelationState = await store.load_state(batch_keys(batch))
    results, effects = decide_batch(batch, state, 120)
    emitting = len(effects.output)
    await store.commit(batch, results, effects)
    return emitting


def deleted_file_links(path: Path) -> list[str]:
    """This process's descriptors that still name `path`, deleted, as the error says."""
    fds = Path("/proc/self/fd")
    return [fd.name for fd in fds.iterdir()
            if os.path.exists(fd) and os.readlink(fd) == f"{path} (deleted)"]


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_commit_into_a_store_deleted_or_replaced_fails_and_keeps_nothing(
    tmp_path: Path, how: str
) -> None:
    path = tmp_path / "g.db"

    async def scenario() -> tuple[int, int]:
        async with await Store.open(path, claim=True) as store:
            await commit_one(store, h.v22_inline(h.record()))
            before = len(await store.outbox_after(0, 100))
            if how == "deleted":
                path.unlink()
            else:
                (tmp_path / "other.db").write_bytes(b"")
                os.replace(tmp_path / "other.db", path)
            # another type of event: a new one, not the first one's twin
            another = h.v30_xml(type_code="SAG_ANERKENDT", kategori="AENDRING",
                                number="AES-2022-0000009", legacy=None, ref=str(uuid.uuid4()))
            with pytest.raises(StoreError, match="was deleted or replaced while in use") as err:
                await commit_one(store, h.v30_inline(another))
            assert f"/proc/{os.getpid()}/fd" in str(err.value)
            if how == "deleted":  # where the error says the file can still be copied from
                assert deleted_file_links(path)
            after = len(await store.outbox_after(0, 100))
            async with await Store.open(tmp_path / "check.db") as check:  # the same batch,
                assert await commit_one(check, h.v30_inline(another)) == 1  # emitting one
            return before, after

    before, after = asyncio.run(scenario())
    assert before >= 1
    assert after == before, "the failed batch was rolled back"


def test_push_is_answered_40_once_the_store_is_deleted(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, int, bool]:
        intake: asyncio.Queue[Delivery] = asyncio.Queue(maxsize=10)
        store = await Store.open(tmp_path / "g.db", claim=True)
        port = free_port()
        receiver = PushReceiver(cfg.PushSource(listen=f"127.0.0.1:{port}"), intake, 1 << 20)
        service = Service(Pipeline(store), intake, [receiver], [], closers=[store.close])
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        url = f"http://127.0.0.1:{port}/"
        first = await when_up(lambda: post(url, h.v22_inline(h.record())))
        (tmp_path / "g.db").unlink()
        second = await post(url, PUSH_BODY)
        ready = service.ready
        stop.set()
        await task
        return status_code(first), status_code(second), ready

    first, second, ready = asyncio.run(scenario())
    assert (first, second) == (20, 40)
    assert not ready


def test_a_deleted_lock_file_is_claimed_again_or_nothing_more_is_acknowledged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The lock file taken for a stale one and deleted: until stop 19 a second gateway could
    then claim the store and decide into it alongside the first, emitting twins under two
    ids. Now the first claims it again at its next batch (or its observer's next pass); if
    another has claimed it since, the first acknowledges nothing more."""
    path, lock = tmp_path / "g.db", tmp_path / "g.db.lock"

    async def scenario() -> None:
        async with await Store.open(path, claim=True) as store:
            lock.unlink()
            await commit_one(store, h.v22_inline(h.record()))  # claimed again
            assert lock.read_text() == f"{os.getpid()}\n"
            with pytest.raises(StoreError, match="in use by another aes-gateway"):
                await Store.open(path, claim=True)
            lock.unlink()
            await store.check_files()  # the observer, with no batch coming
            assert lock.exists()
            lock.unlink()
            second = await Store.open(path, claim=True)  # in the moment before a batch
            try:
                with pytest.raises(StoreError, match="lock file was deleted or replaced, and"):
                    await commit_one(store, h.v30_inline(h.v30_xml(ref=str(uuid.uuid4()))))
            finally:
                await second.close()

    with caplog.at_level(logging.WARNING, "aes_gateway.store"):
        asyncio.run(scenario())
    assert sum("claimed again" in r.getMessage() for r in caplog.records) == 2


def test_an_idle_gateway_notices_its_store_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With no batch coming, the observer's pass (every 5 s) looks: /readyz turns 503, and
    the error is logged once."""
    http = free_port()
    config = cfg.parse(push_to_jsonl(tmp_path, free_port())
                       + f'[http]\nlisten = "127.0.0.1:{http}"\n')

    async def scenario() -> list[int]:
        stop = asyncio.Event()
        service = asyncio.create_task(run(config, stop=stop))
        seen = [(await when_up(lambda: readyz(http)))[0]]
        (tmp_path / "g.db").unlink()
        for _ in range(80):  # up to 8 s: the observer looks every 5 s
            await asyncio.sleep(0.1)
            if (await readyz(http))[0] == 503:
                break
        seen.append((await readyz(http))[0])
        stop.set()
        await service
        return seen

    with caplog.at_level(logging.ERROR, "aes_gateway.runtime"):
        assert asyncio.run(scenario()) == [200, 503]
    said = [r.getMessage() for r in caplog.records if "was deleted or replaced" in r.getMessage()]
    assert len(said) == 1
