"""Native resume with python-socketio through a chaos proxy (issue 12).

Usage: python resume.py SERVER_URL PROXY_URL. Readers connect through the proxy, which cuts
their connections every fraction of a second; python-socketio reconnects on its own, and on
every connect the readers join again with `since` = the last seq they hold of each event. A
writer, connected straight to the server, triggers two event types into two rooms meanwhile.
Every reader must end with every event exactly once, in seq order per (room, event).
Exits non-zero on the first failed check; prints RESULT {...}.
"""

import json
import sys
import time

import socketio

from resume_reader import Reader

SERVER_URL, PROXY_URL = sys.argv[1], sys.argv[2]
ROOMS = ["r1", "r2"]
EVENTS = ["message", "note"]
SECONDS = 6


def main():
    readers = [Reader(PROXY_URL, f"py-reader-{i}", ROOMS, EVENTS) for i in range(3)]
    writer = socketio.Client(reconnection=False)
    writer.connect(SERVER_URL, auth={"userId": "py-writer"}, transports=["websocket"],
                   wait_timeout=10)
    for room in ROOMS:
        assert writer.call("dialogue:join", {"roomId": room}, timeout=5)["ok"]
    time.sleep(0.5)
    end = time.time() + SECONDS
    n = 0
    while time.time() < end:
        ack = writer.call("dialogue:trigger", {"roomId": ROOMS[n % 2], "event": EVENTS[(n >> 1) % 2],
                                               "data": {"n": n}}, timeout=5)
        assert ack["ok"], ack
        n += 1
        time.sleep(0.003)
    newest = {}
    for room in ROOMS:
        for ev in EVENTS:
            page = writer.call("dialogue:getHistory", {"roomId": room, "eventName": ev,
                                                       "start": 0, "end": 1}, timeout=5)
            newest[f"{room}/{ev}"] = page["events"][0]["seq"] if page["events"] else 0
    deadline = time.time() + 30
    while not all(r.last(*k.split("/")) == hi for r in readers for k, hi in newest.items()):
        assert time.time() < deadline, "readers did not catch up"
        time.sleep(0.05)
    for i, r in enumerate(readers):
        for key, hi in newest.items():
            seqs = r.got.get(key, [])
            assert seqs == list(range(1, hi + 1)), f"reader {i} {key}: {seqs[:50]}… ({len(seqs)} of {hi})"
    connects = sum(r.connects for r in readers)
    resumed = sum(r.resumed for r in readers)
    assert connects > len(readers), f"the proxy cut nothing ({connects} connects)"
    assert resumed > 0, "no resume"
    print("RESULT " + json.dumps({"triggered": n, "connects": connects, "resumed": resumed}))
    for r in readers:
        r.client.disconnect()
    writer.disconnect()


if __name__ == "__main__":
    main()
