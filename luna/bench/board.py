"""`luna bench board`: the kanban board RPC for a pipeline of 2,000 cards, a card move (rule check,
timeline, notification, broadcast, integration hook), and change-to-subscriber latency (LISTEN on the
'realtime' channel, which the edge relay and Supabase Realtime's local stand-in read)."""

from __future__ import annotations

import json
import random
import threading
import time

import psycopg

from . import bench, median, percentile, scratch_database

DEMO = "00000000-0000-4000-8000-000000000001"
SUPERVISOR = "00000000-0000-4000-8001-000000000013"
AGENT = "00000000-0000-4000-8001-000000000014"
AGENT2 = "00000000-0000-4000-8001-000000000016"


def _claims(user: str) -> str:
    return json.dumps({"sub": user, "role": "authenticated", "aud": "authenticated", "tenant_id": DEMO})


def _load(conn, cards: int) -> str:
    pipeline = conn.execute("select id from public.pipelines where tenant_id = %s and is_default", (DEMO,)).fetchone()[0]
    conn.execute("""
        insert into public.customers (tenant_id, full_name, phone, email, source, campaign, responsibles, quality_score,
                                      last_contact_at, tags)
        select %s, 'Bench Müşteri ' || i, '+90555' || lpad(i::text, 7, '0'), 'bench' || i || '@example.com',
               (array['web', 'instagram', 'whatsapp', 'meta_form'])[1 + i %% 4], 'kampanya-' || (i %% 5),
               array[(array[%s, %s])[1 + i %% 2]]::uuid[], i %% 100, now() - make_interval(days => i %% 7),
               case when i %% 3 = 0 then '{vip}'::text[] else '{}'::text[] end
        from generate_series(1, %s) i""", (DEMO, AGENT, AGENT2, cards))
    # cards spread over the five flow stages and the side exits
    conn.execute("""
        insert into public.cards (tenant_id, pipeline_id, stage_id, customer_id, title, value, deposit_amount, lost_reason, position)
        select c.tenant_id, %s, s.id, c.id, 'Fırsat ' || c.full_name, 1000 * (n %% 50),
               case when s.name = 'Kapora' then 5000 end, case when s.name = 'Kaybedildi' then 'bütçe' end, n
        from (select c.*, row_number() over (order by c.created_at, c.id) as n from public.customers c
              where c.tenant_id = %s and c.email like 'bench%%') c
        join public.pipeline_stages s on s.pipeline_id = %s and s.position = 1 + (c.n %% 7)""", (pipeline, DEMO, pipeline))
    conn.execute("""
        insert into public.reminders (tenant_id, customer_id, owner_id, title, due_at)
        select c.tenant_id, c.id, c.responsibles[1], 'ara', now() + make_interval(hours => (random() * 72)::int)
        from public.customers c where c.tenant_id = %s and c.email like 'bench%%' and random() < 0.3""", (DEMO,))
    conn.execute("""
        insert into public.activities (tenant_id, customer_id, type_id, title, scheduled_at, assigned_to)
        select c.tenant_id, c.id, t.id, 'randevu', now() + make_interval(hours => (random() * 240)::int), c.responsibles[1]
        from public.customers c join public.activity_types t on t.tenant_id = c.tenant_id and t.key = 'appointment'
        where c.tenant_id = %s and c.email like 'bench%%' and random() < 0.25""", (DEMO,))
    conn.execute("vacuum analyze")
    return str(pipeline)


class _Listener:
    """LISTEN realtime on its own connection; records when each card's board message arrives."""

    def __init__(self, url: str, topic: str):
        self.topic = topic
        self.arrivals: dict[str, float] = {}
        self.cond = threading.Condition()
        self.ready = threading.Event()
        self.stop = False
        self.thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _run(self, url: str):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("listen realtime")
            self.ready.set()
            while not self.stop:
                for note in conn.notifies(timeout=0.2):
                    at = time.perf_counter()
                    msg = json.loads(note.payload)
                    if msg.get("topic") == self.topic and msg.get("event") == "card_moved":
                        with self.cond:
                            self.arrivals[f"{msg['payload']['card_id']}:{msg['payload']['to_stage_id']}"] = at
                            self.cond.notify_all()

    def wait(self, key: str, timeout: float = 5.0) -> float | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while key not in self.arrivals:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.arrivals.pop(key)


class _SseListener(_Listener):
    """The same, through edge's SSE relay (GET /v1/realtime/stream), as a browser would receive it."""

    def __init__(self, base: str, token: str, topic: str):
        self.base, self.token = base, token
        super().__init__("", topic)

    def _run(self, _url: str):
        import httpx

        with httpx.Client(timeout=httpx.Timeout(10, read=60)) as client:
            with client.stream("GET", f"{self.base}/v1/realtime/stream",
                               params={"topics": self.topic, "access_token": self.token}) as response:
                event = None
                for line in response.iter_lines():
                    if self.stop:
                        return
                    if line.startswith("event: "):
                        event = line[7:]
                        if event == "joined":
                            self.ready.set()
                    elif line.startswith("data: ") and event == "card_moved":
                        at = time.perf_counter()
                        payload = json.loads(line[6:])["payload"]
                        with self.cond:
                            self.arrivals[f"{payload['card_id']}:{payload['to_stage_id']}"] = at
                            self.cond.notify_all()


def _serve_edge(url: str):
    """edge on a loopback port in a thread (uvicorn); returns (base url, server)."""
    import socket

    import uvicorn

    from edge.app import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(url), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="on"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    return f"http://127.0.0.1:{port}", server


@bench("board")
def board(quick: bool = False) -> dict:
    """CRM kanban: board RPC over 2,000 cards, card move, change-to-subscriber latency (p95 ms)."""
    cards = 2000
    board_iterations, move_iterations = (30, 60) if quick else (200, 500)
    if quick:
        cards = 500
    with scratch_database("board") as url, psycopg.connect(url, autocommit=True) as conn:
        pipeline = _load(conn, cards)
        stages = dict(conn.execute("select name, id::text from public.pipeline_stages where pipeline_id = %s", (pipeline,)).fetchall())
        movable = [r[0] for r in conn.execute(
            "select id::text from public.cards where pipeline_id = %s and stage_id = %s limit 200",
            (pipeline, stages["Potansiyel"])).fetchall()]
        where = {card: "Potansiyel" for card in movable}

        def as_user(user: str, sql: str, args: tuple):
            with conn.transaction():
                conn.execute("select set_config('role', 'authenticated', true), set_config('request.jwt.claims', %s, true)",
                             (_claims(user),))
                return conn.execute(sql, args).fetchone()[0]

        # --- board
        def board_once(user: str, parse: bool = False) -> tuple[float, int]:
            # As PostgREST serves it: the json text as the database produced it (parse=True adds
            # the client's json decoding in Python, reported separately).
            t0 = time.perf_counter()
            text = as_user(user, "select public.crm_board(%s)::text", (pipeline,))
            result = json.loads(text) if parse else None
            elapsed = (time.perf_counter() - t0) * 1000
            return elapsed, (sum(len(s["cards"]) for s in result["stages"]) if result else len(text))

        for _ in range(5):
            board_once(SUPERVISOR)
        board_ms, parsed_ms = [], []
        for _ in range(board_iterations):
            board_ms.append(board_once(SUPERVISOR)[0])
            elapsed, shown = board_once(SUPERVISOR, parse=True)
            parsed_ms.append(elapsed)
        board_bytes = board_once(SUPERVISOR)[1]
        agent_ms = [board_once(AGENT)[0] for _ in range(max(10, board_iterations // 4))]
        # Baseline, same run and database: the bare select of the same cards as json, as the same
        # caller (one transaction, role + claims), without the board's grouping, counts and joins.
        bare_ms = []
        for i in range(board_iterations + 5):
            t0 = time.perf_counter()
            as_user(SUPERVISOR, "select coalesce(json_agg(c), '[]')::text from public.cards c where c.pipeline_id = %s",
                    (pipeline,))
            if i >= 5:
                bare_ms.append((time.perf_counter() - t0) * 1000)

        # --- moves, and the subscriber's view of them
        topic = f"tenant:{DEMO}:board:{pipeline}"
        listener = _Listener(url, topic)
        rng = random.Random(5)
        move_ms, realtime_ms, lost = [], [], 0
        for i in range(move_iterations + 10):
            card = rng.choice(movable)
            target = "Görüşülüyor" if where[card] == "Potansiyel" else "Potansiyel"
            t0 = time.perf_counter()
            as_user(SUPERVISOR, "select public.move_card(%s, %s)", (card, stages[target]))
            t1 = time.perf_counter()
            where[card] = target
            arrived = listener.wait(f"{card}:{stages[target]}")
            if i < 10:
                continue  # warm-up
            move_ms.append((t1 - t0) * 1000)
            if arrived is None:
                lost += 1
            else:
                realtime_ms.append((arrived - t0) * 1000)
        listener.stop = True
        listener.thread.join(2)

        # --- the same moves seen through edge's SSE relay
        sse_ms, sse_lost = [], 0
        try:
            from luna import tokens

            base, server = _serve_edge(url)
            sse = _SseListener(base, tokens.mint(conn, "supervisor@demo.luna.local"), topic)
            for i in range(move_iterations // 2 + 5):
                card = rng.choice(movable)
                target = "Görüşülüyor" if where[card] == "Potansiyel" else "Potansiyel"
                t0 = time.perf_counter()
                as_user(SUPERVISOR, "select public.move_card(%s, %s)", (card, stages[target]))
                where[card] = target
                arrived = sse.wait(f"{card}:{stages[target]}")
                if i < 5:
                    continue
                if arrived is None:
                    sse_lost += 1
                else:
                    sse_ms.append((arrived - t0) * 1000)
            sse.stop = True
            server.should_exit = True
        except Exception as exc:  # no JWT secret configured, say: the LISTEN figure stands alone
            sse_lost = f"not measured: {exc}"
        counts = conn.execute("""select (select count(*) from public.timeline_events where event_type = 'stage_changed') as timeline,
                                        (select count(*) from public.notifications where kind = 'card_moved') as notifications,
                                        (select count(*) from private.jobs where kind = 'crm.card_moved') as hooks""").fetchone()
    return {"bench": "board", "figures": {
        "board_p95_ms": round(percentile(board_ms, 95), 2),
        "baseline_p95_ms": round(percentile(bare_ms, 95), 2),
        "ratio": round(percentile(board_ms, 95) / percentile(bare_ms, 95), 3),
        "move_p95_ms": round(percentile(move_ms, 95), 2),
        "realtime_p95_ms": round(percentile(realtime_ms, 95), 2),
        "board_median_ms": round(median(board_ms), 2),
        "board_parsed_p95_ms": round(percentile(parsed_ms, 95), 2),
        "board_agent_p95_ms": round(percentile(agent_ms, 95), 2),
        "move_median_ms": round(median(move_ms), 2),
        "realtime_median_ms": round(median(realtime_ms), 2) if realtime_ms else None,
        "realtime_lost": lost,
        "realtime_sse_p95_ms": round(percentile(sse_ms, 95), 2) if sse_ms else None,
        "realtime_sse_median_ms": round(median(sse_ms), 2) if sse_ms else None,
        "realtime_sse_lost": sse_lost},
        "conditions": {"moves_wrote": dict(zip(("timeline", "notifications", "hooks"), counts)),
            "cards": cards, "cards_shown": shown, "board_json_bytes": board_bytes, "stages": 7, "board_iterations": board_iterations,
            "move_iterations": move_iterations, "board_caller": "supervisor (sees all), as PostgREST: set role + claims, one transaction, the json text "
                            "fetched (board_parsed_p95_ms adds decoding it in Python)",
            "move": "public.move_card as supervisor: rule check, timeline, notification to the responsible, "
                    "2 broadcasts (board + customer topic), integration-hook job; one transaction each",
            "realtime": "move start to NOTIFY arrival on channel 'realtime' (the edge relay's source) in another "
                        "connection; realtime_sse_*: move start to the SSE event at a subscriber of edge's relay "
                        "(GET /v1/realtime/stream, uvicorn on loopback), half as many moves",
            "database": "embedded PostgreSQL (luna.bench.scratch_database)"}}
