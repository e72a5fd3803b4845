"""Benchmark: the outbox delivery worker against plain aiosmtplib.

Queues a few thousand messages from one global Internet account through
``portal.services.sending.queue_message`` (not timed), then times draining the
outbox with ``portal.services.delivery.run_once`` until nothing is left. The
baseline sends the same MIME bytes with the same envelopes through aiosmtplib
over 8 reused connections, without a database. The portal also opens 8
connections per batch (``connections_per_account=8``).

Both sides send to an aiosmtpd server that runs in a separate process on
127.0.0.1 and records the Message-ID of every message it accepts, so that the
benchmark can check that each side delivered every message exactly once.
Rounds alternate which side goes first. The benchmark prints the median
throughput of each side, the CPU time per message of the benchmark process
and of the server process, where the portal's time goes and, on the last
line, ``ratio=portal/baseline`` (throughputs, so higher is better).

    .venv/bin/python bench/delivery.py                       # SQLite file
    .venv/bin/python bench/delivery.py --database-url URL    # e.g. PostgreSQL
"""

import argparse
import asyncio
import collections
import cProfile
import functools
import logging
import math
import multiprocessing
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import aiosmtplib
from aiosmtpd.smtp import SMTP as SMTPServer
from cryptography.fernet import Fernet
from sqlalchemy import delete, func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("PORTAL_SECRET_KEY", "bench")
os.environ.setdefault("PORTAL_ENCRYPTION_KEYS", Fernet.generate_key().decode())

from portal import create_app  # noqa: E402
from portal.extensions import db  # noqa: E402
from portal.models import EmailAccount, OutboxMessage  # noqa: E402
from portal.services import access, delivery, sending  # noqa: E402

CONNECTIONS = 8
SMTP_TIMEOUT = 30.0
# Upper bound on one phase, so that a stuck server or worker ends the run.
PHASE_TIMEOUT = 600.0
SERVER_REPLY_TIMEOUT = 30.0

BODY = (
    "Hello,\n\n"
    "Thank you for contacting the service desk. We have received your request "
    "and recorded it under the ticket number in the subject line. A member of "
    "the team will look at it within one working day.\n\n"
    "If you have more details, such as screenshots or the exact text of an "
    "error message, reply to this message and keep the ticket number in the "
    "subject so that your reply is added to the same ticket.\n\n"
) * 3 + "Kind regards,\nThe service desk\n"

MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)


def message_id(mime: bytes) -> str:
    """Return the Message-ID header of a serialised message, or "" if missing."""
    headers = mime.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    match = MESSAGE_ID.search(headers)
    return match.group(1).decode("ascii", "replace") if match else ""


# -- the SMTP server, in a child process ------------------------------------


class CountingHandler:
    """An aiosmtpd handler that accepts every message and records its Message-ID."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.message_ids: list[str] = []

    async def handle_DATA(  # noqa: N802 (aiosmtpd's hook name)
        self, server, session, envelope
    ) -> str:
        with self.lock:
            self.message_ids.append(message_id(envelope.content))
        return "250 2.0.0 Accepted"


def serve(control: Connection) -> None:
    """Run the SMTP server and execute the commands received on ``control``.

    The commands are "reset", "report" and "stop". "report" returns the
    Message-IDs received and the CPU seconds this process used since the last
    "reset". The server's event loop runs in a thread, and the main thread
    reads the commands.
    """
    handler = CountingHandler()
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(
        loop.create_server(
            lambda: SMTPServer(handler, hostname="bench.localhost"), "127.0.0.1", 0
        )
    )
    thread = threading.Thread(target=loop.run_forever, name="smtp-server", daemon=True)
    thread.start()
    control.send(server.sockets[0].getsockname()[1])
    cpu_at_reset = time.process_time()

    while True:
        try:
            command = control.recv()
        except EOFError:
            break
        if command == "reset":
            with handler.lock:
                handler.message_ids.clear()
            cpu_at_reset = time.process_time()
            control.send(None)
        elif command == "report":
            with handler.lock:
                message_ids = list(handler.message_ids)
            control.send((message_ids, time.process_time() - cpu_at_reset))
        elif command == "stop":
            break

    loop.call_soon_threadsafe(server.close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


class ServerProcess:
    """The parent's handle on the SMTP server process."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.control, child_end = context.Pipe()
        self.process = context.Process(
            target=serve, args=(child_end,), name="bench-smtp", daemon=True
        )
        self.process.start()
        child_end.close()
        self.port: int = self._receive()

    def _receive(self):
        if not self.control.poll(SERVER_REPLY_TIMEOUT):
            raise SystemExit(
                "The SMTP server process did not reply within "
                f"{SERVER_REPLY_TIMEOUT:g} s."
            )
        return self.control.recv()

    def reset(self) -> None:
        self.control.send("reset")
        self._receive()

    def report(self) -> tuple[list[str], float]:
        """Return the Message-IDs received and the server's CPU seconds since reset."""
        self.control.send("report")
        return self._receive()

    def stop(self) -> None:
        try:
            self.control.send("stop")
        except OSError:
            pass
        self.process.join(10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)


# -- the portal side ---------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    seconds: float  # wall time
    cpu_seconds: float  # CPU time of the benchmark process, all threads
    server_cpu_seconds: float  # CPU time of the SMTP server process


@dataclass(frozen=True)
class QueuedMessage:
    sender: str
    recipients: list[str]
    mime: bytes


def create_account(port: int) -> int:
    """Add a global Internet account that everyone may use, sending to ``port``."""
    account = EmailAccount(
        account_type="internet",
        friendly_name="Benchmark service desk",
        email_address="servicedesk@example.com",
        from_name="Service desk",
        owner_id=None,
        security=access.Security.EVERYONE,
        enabled=True,
        settings={
            "smtp": {
                "host": "127.0.0.1",
                "port": port,
                "security": "none",
                "auth": "none",
                "username": "",
            },
            "read": None,
            "trusted_fingerprint": "",
        },
    )
    db.session.add(account)
    db.session.commit()
    return account.id


def draft(number: int) -> sending.Draft:
    """Return message ``number``: one To address, every 4th a Cc, every 10th a Bcc."""
    return sending.Draft(
        to=[f"customer{number}@example.net"],
        cc=[f"team{number % 20}@example.org"] if number % 4 == 0 else [],
        bcc=["archive@example.org"] if number % 10 == 0 else [],
        subject=f"[Ticket #{100_000 + number}] Printer on floor 3 is offline",
        body=BODY,
    )


def queue_messages(account_id: int, count: int) -> list[QueuedMessage]:
    """Queue ``count`` messages in one transaction and return what was stored."""
    principal = access.ModulePrincipal(access.Module.EMAIL_MANAGER)
    for number in range(count):
        sending.queue_message(principal, account_id, draft(number))
    db.session.commit()
    rows = db.session.execute(
        select(OutboxMessage.sender, OutboxMessage.recipients, OutboxMessage.mime)
        .where(OutboxMessage.status == delivery.QUEUED)
        .order_by(OutboxMessage.id)
    )
    return [
        QueuedMessage(sender, list(recipients), mime)
        for sender, recipients, mime in rows
    ]


def drain_outbox(policy: delivery.DeliveryPolicy, expected: int) -> int:
    """Call ``run_once`` until it finds nothing; return the number of batches."""
    # A correct worker needs ceil(expected / batch_size) batches, and the
    # margin leaves room for rows that come back after a temporary failure.
    max_batches = 2 * math.ceil(expected / policy.batch_size) + 10
    deadline = time.monotonic() + PHASE_TIMEOUT
    batches = 0
    while batches < max_batches and time.monotonic() < deadline:
        if not delivery.run_once("bench-worker", policy):
            return batches
        batches += 1
    raise SystemExit(
        f"The outbox was not empty after {batches} batches. "
        "Check the portal's log for delivery errors."
    )


def check_outbox(expected: int) -> None:
    """Raise SystemExit unless every row was sent at the first attempt."""
    counts = dict(
        db.session.execute(
            select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status)
        ).all()
    )
    if counts != {delivery.SENT: expected}:
        last_error = db.session.scalar(
            select(OutboxMessage.last_error)
            .where(OutboxMessage.last_error != "")
            .limit(1)
        )
        raise SystemExit(
            f"Expected {expected} sent rows in the outbox, found these counts by "
            f"status: {counts}. One of the errors: {last_error or 'none recorded'}"
        )
    retried = db.session.scalar(select(func.count()).where(OutboxMessage.attempts != 1))
    if retried:
        raise SystemExit(f"{retried} outbox rows needed more than one attempt.")


class StageTimer:
    """Wall time of the delivery module's stages, measured by wrapping its functions.

    The wrappers replace module attributes, which ``run_once`` and ``deliver``
    look up at each call. They add two ``perf_counter`` calls per call.
    """

    STAGES = ("claim_batch", "deliver", "_parse", "_send_all", "_record")

    def __init__(self) -> None:
        self.seconds: collections.Counter[str] = collections.Counter()
        self.originals = {name: getattr(delivery, name) for name in self.STAGES}

    def install(self) -> None:
        for name, original in self.originals.items():
            wrapper = self._wrap_async if name == "_send_all" else self._wrap
            setattr(delivery, name, wrapper(name, original))

    def remove(self) -> None:
        for name, original in self.originals.items():
            setattr(delivery, name, original)

    def _wrap(self, name, function):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started

        return timed

    def _wrap_async(self, name, function):
        @functools.wraps(function)
        async def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return await function(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started

        return timed

    def breakdown(self, total: float) -> dict[str, float]:
        """Split ``total`` seconds into the worker's stages."""
        seconds = self.seconds
        inside_deliver = seconds["_parse"] + seconds["_send_all"] + seconds["_record"]
        return {
            "claim (claim_batch)": seconds["claim_batch"],
            "load rows, check access, event loop": seconds["deliver"] - inside_deliver,
            "parse MIME (_parse)": seconds["_parse"],
            "send (_send_all)": seconds["_send_all"],
            "record outcomes (_record)": seconds["_record"],
            "rest of run_once and the loop": total
            - seconds["claim_batch"]
            - seconds["deliver"],
        }


# -- the baseline ------------------------------------------------------------


async def send_share(port: int, share: list[QueuedMessage]) -> None:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=port,
        timeout=SMTP_TIMEOUT,
        start_tls=False,
        local_hostname="localhost",
    )
    await client.connect()
    try:
        for message in share:
            await client.sendmail(
                message.sender,
                message.recipients,
                message.mime,
                mail_options=["BODY=8BITMIME"],
            )
    finally:
        await client.quit()


async def send_baseline(port: int, messages: list[QueuedMessage]) -> None:
    shares = [messages[index::CONNECTIONS] for index in range(CONNECTIONS)]
    await asyncio.gather(*(send_share(port, share) for share in shares if share))


# -- the run -----------------------------------------------------------------


def check_received(received_ids: list[str], expected_ids: list[str], side: str) -> None:
    """Raise SystemExit unless each expected message was received once."""
    received = collections.Counter(received_ids)
    expected = collections.Counter(expected_ids)
    if received == expected:
        return
    missing = sum((expected - received).values())
    extra = sum((received - expected).values())
    raise SystemExit(
        f"The {side} delivered {sum(received.values())} messages for "
        f"{len(expected_ids)} queued: {missing} missing, "
        f"{extra} duplicate or unexpected."
    )


def run_round(
    server: ServerProcess,
    account_id: int,
    count: int,
    policy: delivery.DeliveryPolicy,
    portal_first: bool,
    timer: StageTimer | None,
    profiler: cProfile.Profile | None,
) -> tuple[Measurement, Measurement]:
    """Queue ``count`` messages and send them through both sides.

    Returns the measurements of the portal and of the baseline.
    """
    messages = queue_messages(account_id, count)
    expected_ids = [message_id(message.mime) for message in messages]
    if len(set(expected_ids)) != count or "" in expected_ids:
        raise SystemExit("The queued messages do not have distinct Message-IDs.")

    def baseline() -> Measurement:
        server.reset()
        cpu_started, started = time.process_time(), time.perf_counter()
        asyncio.run(send_baseline(server.port, messages))
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
        received_ids, server_cpu_seconds = server.report()
        check_received(received_ids, expected_ids, "baseline")
        return Measurement(seconds, cpu_seconds, server_cpu_seconds)

    def portal() -> Measurement:
        server.reset()
        if timer:
            timer.install()
        if profiler:
            profiler.enable()
        cpu_started, started = time.process_time(), time.perf_counter()
        try:
            drain_outbox(policy, count)
        finally:
            seconds = time.perf_counter() - started
            cpu_seconds = time.process_time() - cpu_started
            if profiler:
                profiler.disable()
            if timer:
                timer.remove()
        received_ids, server_cpu_seconds = server.report()
        check_outbox(count)
        check_received(received_ids, expected_ids, "portal")
        return Measurement(seconds, cpu_seconds, server_cpu_seconds)

    if portal_first:
        portal_measurement = portal()
        baseline_measurement = baseline()
    else:
        baseline_measurement = baseline()
        portal_measurement = portal()

    db.session.execute(delete(OutboxMessage))
    db.session.commit()
    return portal_measurement, baseline_measurement


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL of an empty database, which the benchmark migrates "
        "(default: a new SQLite file)",
    )
    parser.add_argument(
        "--messages", type=int, default=3000, help="messages per round (default 3000)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of both sides (default 3)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=delivery.DeliveryPolicy.batch_size,
        help="rows claimed per run_once call, DeliveryPolicy.batch_size "
        f"(default {delivery.DeliveryPolicy.batch_size})",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="write cProfile statistics of the portal phases to FILE. The profiler "
        "slows the portal, so the ratio of such a run is not comparable.",
    )
    arguments = parser.parse_args()
    if arguments.messages < 1 or arguments.rounds < 1 or arguments.batch_size < 1:
        parser.error("--messages, --rounds and --batch-size must be at least 1")
    return arguments


def main() -> None:
    arguments = parse_arguments()
    # The portal configures INFO logging unless the root logger has a handler,
    # and INFO logs a line for every message sent.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    folder = tempfile.mkdtemp(prefix="portal-bench-")
    url = arguments.database_url or f"sqlite:///{folder}/bench.sqlite3"
    policy = delivery.DeliveryPolicy(
        batch_size=arguments.batch_size,
        connections_per_account=CONNECTIONS,
        timeout=SMTP_TIMEOUT,
    )
    profiler = cProfile.Profile() if arguments.profile else None
    timer = None if profiler else StageTimer()

    server = ServerProcess()
    try:
        app = create_app({"SQLALCHEMY_DATABASE_URI": url, "START_WORKER": False})
        app.instance_path = folder
        with app.app_context():
            from flask_migrate import upgrade

            upgrade()
            account_id = create_account(server.port)
            print(
                f"database: {db.engine.dialect.name}; {arguments.messages} messages "
                f"per round; batch size {policy.batch_size}; {CONNECTIONS} connections"
            )

            # Warm-up: fills SQLAlchemy's statement cache and imports lazy modules.
            run_round(
                server,
                account_id,
                min(arguments.messages, 200),
                policy,
                False,
                None,
                None,
            )

            portal_runs, baseline_runs = [], []
            for number in range(arguments.rounds):
                portal_run, baseline_run = run_round(
                    server,
                    account_id,
                    arguments.messages,
                    policy,
                    number % 2 == 1,
                    timer,
                    profiler,
                )
                portal_runs.append(portal_run)
                baseline_runs.append(baseline_run)
                portal_rate = arguments.messages / portal_run.seconds
                baseline_rate = arguments.messages / baseline_run.seconds
                print(
                    f"round {number + 1}: portal {portal_rate:,.0f} messages/s, "
                    f"baseline {baseline_rate:,.0f} messages/s"
                )
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)

    if profiler:
        profiler.dump_stats(arguments.profile)
        print(f"profile of the portal phases written to {arguments.profile}")
    else:
        total = sum(run.seconds for run in portal_runs)
        print("portal time by stage, all rounds:")
        for stage, seconds in timer.breakdown(total).items():
            print(f"  {stage:<36} {seconds:7.2f} s  {100 * seconds / total:5.1f} %")

    rates = {}
    for label, runs in (
        ("portal delivery worker", portal_runs),
        ("aiosmtplib, no database", baseline_runs),
    ):
        rates[label] = arguments.messages / statistics.median(
            run.seconds for run in runs
        )
        cpu = statistics.median(run.cpu_seconds for run in runs)
        server_cpu = statistics.median(run.server_cpu_seconds for run in runs)
        print(
            f"{label + ':':<25}{rates[label]:7,.0f} messages/s; CPU per message: "
            f"{cpu / arguments.messages * 1000:.2f} ms sending, "
            f"{server_cpu / arguments.messages * 1000:.2f} ms in the server "
            f"(medians of {arguments.rounds})"
        )
    ratio = rates["portal delivery worker"] / rates["aiosmtplib, no database"]
    print(f"ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
