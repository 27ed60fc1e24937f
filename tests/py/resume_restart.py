"""Native resume with python-socketio across a graceful restart and a kill -9 (issue 12).

Driven by tests/resume.rs (python_client_resumes_across_a_restart_and_a_crash), which stops
the server with SIGTERM, starts it again, later kills it with -9 and starts it again, the
proxies retargeted each time. Usage: python resume_restart.py CHAOS_URL STEADY_URL.

Readers connect through the chaos proxy (cuts every fraction of a second) and, on every
connect, join with `since` = the last seq they hold of each event. A writer, through the
steady proxy, reconnects by itself and triggers two event types into two rooms; a trigger cut
by a stop is not counted as acked. Every reader must end with every stored event exactly once,
in seq order per (room, event), and every acked one among them. Prints READY once everyone
has joined, then RESULT {...}; exits non-zero on a failed check.
"""

import json
import sys
import threading
import time

import socketio

from resume_reader import Reader

CHAOS_URL, STEADY_URL = sys.argv[1], sys.argv[2]
ROOMS = ["r1", "r2"]
EVENTS = ["message", "note"]
SECONDS = 9
# python-socketio does not recover sessions: no offsets on its events.
AUTH = {"recovery": False}


class Writer:
    def __init__(self):
        self.ready = threading.Event()
        self.client = socketio.Client(reconnection=True, reconnection_delay=0.05,
                                      reconnection_delay_max=0.3)
        self.client.on("connect", self.on_connect)
        self.client.connect(STEADY_URL, auth={"userId": "py-rs-writer", **AUTH},
                            transports=["websocket"], wait_timeout=10)

    def on_connect(self):
        self.ready.clear()
        threading.Thread(target=self.join, daemon=True).start()

    def join(self):
        try:
            for room in ROOMS:
                self.client.call("dialogue:join", {"roomId": room}, timeout=3)
            self.ready.set()
        except Exception:  # cut again while joining: the next connect joins
            pass

    def call(self, event, payload):
        if not self.ready.wait(timeout=5):
            return None
        try:
            return self.client.call(event, payload, timeout=3)
        except Exception:  # cut by a stop: acked or not, the readers agree with the server
            return None


def main():
    readers = [Reader(CHAOS_URL, f"py-rs-reader-{i}", ROOMS, EVENTS, AUTH) for i in range(3)]
    writer = Writer()
    deadline = time.time() + 20
    while not (writer.ready.is_set() and all(r.joined.is_set() for r in readers)):
        assert time.time() < deadline, "clients did not join"
        time.sleep(0.05)
    print("READY", flush=True)
    acked = {}
    unanswered = 0
    end = time.time() + SECONDS
    n = 0
    while time.time() < end:
        room, ev = ROOMS[n % 2], EVENTS[(n >> 1) % 2]
        ack = writer.call("dialogue:trigger", {"roomId": room, "event": ev, "data": {"n": n}})
        if ack and ack.get("ok"):
            acked[f"{room}/{ev}/{ack['seq']}"] = n
        else:
            unanswered += 1
        n += 1
        time.sleep(0.005)
    newest = {}
    for room in ROOMS:
        for ev in EVENTS:
            page = None
            for _ in range(50):
                page = writer.call("dialogue:getHistory", {"roomId": room, "eventName": ev,
                                                           "start": 0, "end": 1})
                if page and page.get("ok"):
                    break
                time.sleep(0.1)
            assert page and page.get("ok"), f"no history of {room}/{ev}: {page}"
            newest[f"{room}/{ev}"] = page["events"][0]["seq"] if page["events"] else 0
    deadline = time.time() + 30
    while not all(r.last(*k.split("/")) == hi for r in readers for k, hi in newest.items()):
        assert time.time() < deadline, f"readers did not catch up to {newest}"
        time.sleep(0.05)
    time.sleep(0.5)  # a duplicate arriving late would show
    for i, r in enumerate(readers):
        for key, hi in newest.items():
            seqs = r.got.get(key, [])
            assert seqs == list(range(1, hi + 1)), \
                f"reader {i} {key}: {len(seqs)} events for 1..{hi}, first {seqs[:30]}"
    for key in acked:
        room, ev, seq = key.split("/")
        assert int(seq) <= newest[f"{room}/{ev}"], f"acked {key} is not stored"
    connects = sum(r.connects for r in readers)
    resumed = sum(r.resumed for r in readers)
    print("RESULT " + json.dumps({"acked": len(acked), "unanswered": unanswered,
                                  "connects": connects, "resumed": resumed, "newest": newest}),
          flush=True)
    for r in readers:
        r.client.disconnect()
    writer.client.disconnect()


if __name__ == "__main__":
    main()
