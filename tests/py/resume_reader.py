"""A python-socketio reader that resumes natively: on every connect it joins its rooms with
`since` = the last seq it holds of each event (shared by resume.py and resume_restart.py)."""

import threading

import socketio


class Reader:
    def __init__(self, url, name, rooms, events, auth=None):
        self.rooms, self.events = rooms, events
        self.got = {}
        self.lock = threading.Lock()
        self.connects = 0
        self.resumed = 0
        self.joined = threading.Event()
        self.client = socketio.Client(reconnection=True, reconnection_delay=0.05,
                                      reconnection_delay_max=0.3)
        self.client.on("connect", self.on_connect)
        self.client.on("dialogue:event", self.on_event)
        self.client.connect(url, auth={"userId": name, **(auth or {})},
                            transports=["websocket"], wait_timeout=10)

    def on_event(self, e, offset=None):
        # With connection-state recovery on (the default), events carry the session's
        # offset as a second argument; python-socketio does not recover, so it is unused.
        with self.lock:
            self.got.setdefault(f"{e['roomId']}/{e['event']}", []).append(e["seq"])

    def last(self, room, event):
        with self.lock:
            return (self.got.get(f"{room}/{event}") or [0])[-1]

    def on_connect(self):
        self.connects += 1
        first = self.connects == 1
        for room in self.rooms:
            payload = {"roomId": room}
            if not first:
                payload["since"] = {ev: self.last(room, ev) for ev in self.events}
            # An emit with a callback: a handler must not wait for an ack itself.
            self.client.emit("dialogue:join", payload, callback=self.on_joined)

    def on_joined(self, ack):
        if ack.get("ok"):
            self.joined.set()
        if ack.get("resume", {}).get("resumed"):
            self.resumed += 1
