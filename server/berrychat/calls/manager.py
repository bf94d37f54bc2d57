"""1:1 call signalling: the call state machine (docs/protocol.md, "Calls").

Every call is owned by the process that received its `call.invite`; the call id starts with
that process's id (`<process id>.<random>`). The owner keeps the state, the ring timer and the
two parties' devices; requests about a call that arrive on another process are forwarded to the
owner over the broker's control channel and answered the same way. Frames for one device go out
as a `call.out` control message that every process delivers to its connections of that
(user, device); the incoming ring goes to every device of the callee through the ordinary
per-user publish. "Device" is the session's device id (every tab of one login is one device).

States: ringing -> active -> (ended). An ended call is forgotten; the conversation keeps a
`call` message (missed, rejected, busy, ended with its duration).

An owner that dies without stopping (SIGKILL, crash, power loss) cannot end its calls, so the
other processes watch it. The owner announces each call and its answer on the control channel
(`call.seen`); every other process keeps those calls in `remote` until `call.end`, whether or
not a party is connected to it now (a device may reconnect to it later). Every LOST_CHECK
seconds each process asks Redis which owners of the calls it knows (`remote` and
`local_parties`) are alive. An owner whose liveness key is missing at two checks at least
CONFIRM_BEATS * PROC_REFRESH apart is gone (a live owner re-sets its key every PROC_REFRESH,
also after a Redis restart lost it): its calls end here with reason "server_lost" for the
devices connected here, their busy claims are released and each call is recorded (with the
call's client id, so the several processes that do this store it once). A failed liveness
check (Redis trouble) means "unknown", never "dead", and starts the confirmation over.
Detection takes at most PROC_TTL + PROC_REFRESH (the liveness cache) + CONFIRM_BEATS *
PROC_REFRESH + 2 * LOST_CHECK after the owner's last heartbeat: 35 s with the defaults.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from .. import shared
from ..metrics import LabeledCounter, Metrics
from ..protocol.codes import ChatError
from ..protocol.frames import encode
from ..store import Op
from .busy import CLAIM_TTL, LocalBusy
from .ice import ice_servers

log = logging.getLogger(__name__)

FORWARD_TIMEOUT = 5.0  # seconds to wait for the owning process to answer a forwarded request
LOST_CHECK = 2.5  # seconds between checks that the owners of the calls known here are alive
CONFIRM_BEATS = 2  # an owner is gone when missing at checks this many heartbeats apart
REMOTE_MAX = 20_000  # calls of other processes remembered here (the oldest are dropped)

Device = tuple[int, str]  # (user id, device id)


@dataclass(slots=True)
class Call:
    id: str
    conv: int
    media: str
    caller: Device
    callee: int
    state: str = "ringing"  # ringing | active
    callee_device: str | None = None
    created: float = field(default_factory=time.time)
    answered: float = 0.0
    ringing_sent: bool = False
    timer: asyncio.TimerHandle | None = None
    stale: bool = False  # (remote calls) its claim was not found at the last claim check


class CallManager:
    def __init__(self, settings: Any, chat: Any, hub: Any, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.cfg = settings.calls
        self.chat = chat
        self.hub = hub
        self.pid = getattr(hub.broker, "process_id", None) or os.urandom(8).hex()
        self.busy: LocalBusy = LocalBusy()
        self.calls: dict[str, Call] = {}
        # devices connected to this process that are a party of some call (for disconnects)
        self.local_parties: dict[Device, set[str]] = {}
        # calls owned by other processes (from their `call.seen`), watched for a dead owner
        self.remote: dict[str, Call] = {}
        self._gone: dict[str, float] = {}  # owner process id -> when first seen not alive
        self._req = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._refresher: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self.outcomes = LabeledCounter(
            "berrychat_calls_total", "calls ended here (the owning process), by reason", "reason"
        )
        if metrics is not None:
            metrics._all.append(self.outcomes)
            metrics.gauge("berrychat_calls_active", "calls owned here", lambda: len(self.calls))
        hub.control_handlers["call.req"] = self._on_request
        hub.control_handlers["call.rep"] = self._on_reply
        hub.control_handlers["call.out"] = self._on_out
        hub.control_handlers["call.end"] = self._on_end
        hub.control_handlers["call.seen"] = self._on_seen

    def use_redis(self, client: Any, prefix: str) -> None:
        from .busy import RedisBusy

        self.busy = RedisBusy(client, prefix)

    def start(self) -> None:
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_claims())

    async def stop(self) -> None:
        """End the calls owned here (the process is going away) and stop the timers."""
        for call in list(self.calls.values()):
            await self._end(call, "server_shutdown", None)
        if self._refresher is not None:
            self._refresher.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)

    async def _refresh_claims(self) -> None:
        """Every LOST_CHECK seconds: end here the calls whose owner died; every CLAIM_TTL / 3
        seconds: refresh the busy claims of the calls owned here and drop remote calls whose
        end was not heard."""
        next_refresh = time.monotonic() + CLAIM_TTL / 3
        while True:
            await asyncio.sleep(LOST_CHECK)
            try:
                await self._check_owners()
            except Exception:
                log.exception("call owner check failed")
            if time.monotonic() < next_refresh:
                continue
            next_refresh = time.monotonic() + CLAIM_TTL / 3
            claims = []
            for c in self.calls.values():
                claims += [(c.caller[0], c.id), (c.callee, c.id)]
            try:
                await self.busy.refresh(claims)
            except Exception:
                log.exception("call claim refresh failed")
            try:
                await self._drop_stale()
            except Exception:
                log.exception("remote call cleanup failed")

    # ---- requests from this process's connections ----------------------------------------
    async def handle(self, conn: Any, ftype: str, f: dict[str, Any]) -> dict[str, Any]:
        """A `call.*` frame from a local connection: the ack payload, or ChatError."""
        if not self.cfg.enabled:
            raise ChatError("forbidden", "calls are disabled on this server")
        user, device = conn.user_id, conn.device_id
        # signalling counts against the message rate limits (relaying is not free)
        err = self.chat.rates.message(user, getattr(conn, "peer", ""))
        if err is not None:
            raise err
        if ftype == "call.ice_servers":
            return ice_servers(self.cfg, user)
        if ftype == "call.invite":
            res = await self._invite(user, device, f["conv"], f.get("media", "audio"))
            if not getattr(conn, "attached", True):
                self.conn_closed(conn)  # it went away while the invite was processed
            return res
        call_id = f["call"]
        owner = call_id.partition(".")[0]
        if owner == self.pid:
            res = await self._apply(user, device, ftype, f)
        else:
            res = await self._forward(owner, user, device, ftype, f)
        if ftype == "call.accept":
            self.local_parties.setdefault((user, device), set()).add(call_id)
            if not getattr(conn, "attached", True):
                self.conn_closed(conn)  # it went away while the accept was forwarded
        return res

    def conn_closed(self, conn: Any) -> None:
        """A connection detached: if it was its device's last one here, the device left its
        calls (the owner ends them with reason "disconnected")."""
        key = (conn.user_id, conn.device_id)
        ids = self.local_parties.get(key)
        if not ids:
            return
        if any(getattr(ep, "device_id", None) == key[1] for ep in self.hub.connections(key[0])):
            return
        del self.local_parties[key]
        for call_id in ids:
            owner = call_id.partition(".")[0]
            f = {"call": call_id}
            if owner == self.pid:
                self._spawn(self._apply(key[0], key[1], "device_gone", f))
            else:
                self._spawn(self._forward(owner, key[0], key[1], "device_gone", f))

    def _spawn(self, coro: Any) -> None:
        async def run() -> None:
            try:
                await coro
            except ChatError:
                pass  # the call ended meanwhile
            except Exception:
                log.exception("call task failed")

        t = asyncio.get_running_loop().create_task(run())
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # ---- forwarding to the owning process ------------------------------------------------
    async def _owner_alive(self, owner: str) -> bool:
        """Is the process that owns a call running? Saves the forwarding timeout for ids of
        unknown or dead processes."""
        if getattr(self.hub.broker, "process_id", None) is None:
            return False  # one process: every live call is owned here
        live = getattr(self.chat.state, "_live", None)  # RedisState: process liveness keys
        if live is None:
            return True
        try:
            return owner in await live({owner})
        except Exception:
            return True  # Redis trouble: try, the forwarding timeout bounds it

    async def _forward(
        self, owner: str, user: int, device: str, ftype: str, f: dict[str, Any]
    ) -> dict[str, Any]:
        if not await self._owner_alive(owner):
            raise ChatError("not_found", "no such call (it has ended)")
        n = next(self._req)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[n] = fut
        self.hub.broker.control(
            {
                "op": "call.req",
                "to": owner,
                "from": self.pid,
                "req": n,
                "user": user,
                "device": device,
                "type": ftype,
                "f": f,
            }
        )
        try:
            rep = await asyncio.wait_for(fut, FORWARD_TIMEOUT)
        except TimeoutError:
            raise ChatError("not_found", "no such call (its server is gone)") from None
        finally:
            self._waiting.pop(n, None)
        if "error" in rep:
            raise ChatError(rep["error"][0], rep["error"][1])
        return rep["ok"]

    def _on_request(self, msg: dict[str, Any]) -> None:
        if msg.get("to") != self.pid:
            return

        async def go() -> None:
            try:
                rep: dict[str, Any] = {
                    "ok": await self._apply(msg["user"], msg["device"], msg["type"], msg["f"])
                }
            except ChatError as e:
                rep = {"error": [e.code, e.message]}
            except Exception:
                log.exception("forwarded call request failed")
                rep = {"error": ["internal", "internal error"]}
            self.hub.broker.control({"op": "call.rep", "to": msg["from"], "req": msg["req"], **rep})

        self._spawn(go())

    def _on_reply(self, msg: dict[str, Any]) -> None:
        if msg.get("to") != self.pid:
            return
        fut = self._waiting.get(msg.get("req", 0))
        if fut is not None and not fut.done():
            fut.set_result(msg)

    # ---- delivery ------------------------------------------------------------------------
    def _to_device(self, dev: Device, frame: dict[str, Any]) -> None:
        self.hub.broker.control({"op": "call.out", "user": dev[0], "device": dev[1], "f": frame})

    def _to_user_except(self, user: int, device: str | None, frame: dict[str, Any]) -> None:
        self.hub.broker.control({"op": "call.out", "user": user, "except": device, "f": frame})

    def _on_out(self, msg: dict[str, Any]) -> None:
        eps = self.hub.connections(msg["user"])
        if not eps:
            return
        data = encode(msg["f"])
        dev, skip = msg.get("device"), msg.get("except")
        for ep in list(eps):
            d = getattr(ep, "device_id", None)
            if (dev is not None and d != dev) or (skip is not None and d == skip):
                continue
            ep.send_bytes(data)

    def _on_end(self, msg: dict[str, Any]) -> None:
        call_id = msg["call"]
        self.remote.pop(call_id, None)
        for key in [k for k, ids in self.local_parties.items() if call_id in ids]:
            ids = self.local_parties[key]
            ids.discard(call_id)
            if not ids:
                del self.local_parties[key]

    # ---- calls of other processes: a dead owner ------------------------------------------
    def _seen(self, call: Call) -> None:
        """Tell the other processes about a call owned here (they end it if this one dies)."""
        self.hub.broker.control(
            {
                "op": "call.seen",
                "call": call.id,
                "conv": call.conv,
                "media": call.media,
                "caller": list(call.caller),
                "callee": call.callee,
                "device": call.callee_device,
                "answered": call.answered,
            }
        )

    def _on_seen(self, msg: dict[str, Any]) -> None:
        call_id = msg["call"]
        if call_id.partition(".")[0] == self.pid:
            return
        u, d = msg["caller"]
        call = Call(call_id, msg["conv"], msg["media"], (u, d), msg["callee"])
        if msg.get("device"):
            call.state, call.callee_device = "active", msg["device"]
            call.answered = msg.get("answered") or time.time()
        if call_id not in self.remote and len(self.remote) >= REMOTE_MAX:
            del self.remote[next(iter(self.remote))]
        self.remote[call_id] = call

    async def _check_owners(self) -> None:
        """Find the owners of known calls that are gone, and end their calls here."""
        owners = {c.partition(".")[0] for c in self.remote}
        for ids in self.local_parties.values():
            owners.update(c.partition(".")[0] for c in ids)
        owners.discard(self.pid)
        for o in [o for o in self._gone if o not in owners]:
            del self._gone[o]
        live = getattr(self.chat.state, "_live", None)
        if not owners or live is None or getattr(self.hub.broker, "process_id", None) is None:
            return
        try:
            alive = await live(owners)
        except Exception as e:
            # liveness unknown is not dead: the confirmation starts over once Redis answers
            log.warning("call owners' liveness unknown (no call ended): %s", e)
            self._gone.clear()
            return
        now = time.monotonic()
        lost = set()
        for o in owners:
            if o in alive:
                self._gone.pop(o, None)
            elif now - self._gone.setdefault(o, now) >= CONFIRM_BEATS * shared.PROC_REFRESH:
                lost.add(o)
        if lost:
            for o in lost:
                del self._gone[o]
            await self._owners_lost(lost)

    async def _owners_lost(self, lost: set[str]) -> None:
        """End the calls of dead owners for the devices connected here (docs/protocol.md §18,
        reason "server_lost"), release their claims and record them (once cluster-wide)."""
        calls = [c for i, c in self.remote.items() if i.partition(".")[0] in lost]
        for c in calls:
            del self.remote[c.id]
        known = {c.id for c in calls}
        # devices here in a call this process did not hear announced (its `call.seen` lost)
        others: dict[str, list[Device]] = {}
        for key in list(self.local_parties):
            ids = self.local_parties[key]
            for i in [i for i in ids if i.partition(".")[0] in lost]:
                ids.discard(i)
                if i not in known:
                    others.setdefault(i, []).append(key)
            if not ids:
                del self.local_parties[key]
        now = time.time()
        releases = []
        for c in calls:
            frame: dict[str, Any] = {"type": "call.ended", "call": c.id, "reason": "server_lost"}
            duration = max(0, int(round(now - c.answered))) if c.answered else 0
            if c.answered:
                frame["duration"] = duration
            data = encode(frame)
            self._send_here(c.caller[0], c.caller[1], data)
            self._send_here(c.callee, c.callee_device, data)  # None while ringing: every device
            releases += [(c.caller[0], c.id), (c.callee, c.id)]
            self._record(c, "ended" if c.answered else "missed", duration, reason="server_lost")
        for call_id, devices in others.items():
            data = encode({"type": "call.ended", "call": call_id, "reason": "server_lost"})
            for user, device in devices:
                self._send_here(user, device, data)
                releases.append((user, call_id))
        if calls or others:
            log.warning(
                "the owning process of %d call(s) is gone (%s): ended here (server_lost)",
                len(calls) + len(others),
                ", ".join(sorted(lost)),
            )
        await asyncio.gather(*(self.busy.release(u, i) for u, i in releases))

    def _send_here(self, user: int, device: str | None, data: bytes) -> None:
        """A frame to this process's connections of (user, device), or of every device."""
        for ep in list(self.hub.connections(user) or ()):
            if device is None or getattr(ep, "device_id", None) == device:
                ep.send_bytes(data)

    async def _drop_stale(self) -> None:
        """Forget remote calls whose `call.end` was lost: the caller's claim no longer names
        the call at two claim checks in a row (the owner re-creates lost claims meanwhile)."""
        old = time.time() - CLAIM_TTL
        check = [c for c in self.remote.values() if c.created < old]
        if not check:
            return
        held = await self.busy.holders([c.caller[0] for c in check])
        if held is None:
            return  # Redis trouble: unknown, keep them
        for c in check:
            if held.get(c.caller[0]) == c.id:
                c.stale = False
            elif c.stale:
                self.remote.pop(c.id, None)
            else:
                c.stale = True

    # ---- the state machine (owner only) --------------------------------------------------
    async def _invite(self, user: int, device: str, conv: int, media: str) -> dict[str, Any]:
        detail = await self.chat.get_conversation(user, conv)
        if detail.get("kind") != "direct":
            raise ChatError("forbidden", "calls are 1:1: call from a direct conversation")
        others = [m for m in detail.get("members", []) if m["user"] != user]
        if len(others) != 1:
            raise ChatError("not_found", "the other member of this conversation is gone")
        if others[0].get("bot"):
            raise ChatError("forbidden", "bots do not take calls")
        callee = others[0]["user"]
        call_id = f"{self.pid}.{secrets.token_hex(8)}"
        if not await self.busy.claim(user, call_id):
            raise ChatError("busy", "you are already in a call")
        call = Call(call_id, conv, media, (user, device), callee)
        if not await self.busy.claim(callee, call_id):
            await self.busy.release(user, call_id)
            self.outcomes.inc("busy")
            self._record(call, "busy", 0)
            return {"call": call_id, "state": "ended", "reason": "busy"}
        self.calls[call_id] = call
        self.local_parties.setdefault((user, device), set()).add(call_id)
        self._seen(call)
        incoming = {
            "type": "call.incoming",
            "call": call_id,
            "conv": conv,
            "from": user,
            "media": media,
            "ring_timeout": self.cfg.ring_timeout_seconds,
            **ice_servers(self.cfg, callee),
        }
        self.hub.publish([callee], encode(incoming))
        call.timer = asyncio.get_running_loop().call_later(
            self.cfg.ring_timeout_seconds, self._timeout, call_id
        )
        return {"call": call_id, "state": "ringing", **ice_servers(self.cfg, user)}

    def _timeout(self, call_id: str) -> None:
        call = self.calls.get(call_id)
        if call is not None and call.state == "ringing":
            self._spawn(self._end(call, "timeout", None))

    async def _apply(self, user: int, device: str, ftype: str, f: dict[str, Any]) -> dict:
        call = self.calls.get(f["call"])
        if call is None:
            raise ChatError("not_found", "no such call (it has ended)")
        me: Device = (user, device)
        is_caller_dev = me == call.caller
        is_callee = user == call.callee
        is_callee_dev = is_callee and device == call.callee_device
        if ftype == "device_gone":
            if call.state == "active" and (is_caller_dev or is_callee_dev):
                await self._end(call, "disconnected", me)
            elif call.state == "ringing" and is_caller_dev:
                await self._end(call, "cancelled", me)
            return {}
        if not (is_caller_dev or is_callee or user == call.caller[0]):
            raise ChatError("not_found", "no such call")
        if ftype == "call.ringing":
            if not is_callee:
                raise ChatError("forbidden", "only the callee's devices ring")
            if call.state == "ringing" and not call.ringing_sent:
                call.ringing_sent = True
                self._to_device(call.caller, {"type": "call.ringing", "call": call.id})
            return {"call": call.id, "state": call.state}
        if ftype == "call.accept":
            if not is_callee:
                raise ChatError("forbidden", "only the callee can accept")
            if call.state != "ringing":
                raise ChatError("conflict", "the call was already answered")
            call.state = "active"
            call.callee_device = device
            call.answered = time.time()
            if call.timer is not None:
                call.timer.cancel()
            self._seen(call)
            self._to_device(
                call.caller, {"type": "call.accepted", "call": call.id, "device": device}
            )
            self._to_user_except(
                call.callee,
                device,
                {"type": "call.ended", "call": call.id, "reason": "answered_elsewhere"},
            )
            return {"call": call.id, "state": "active", **ice_servers(self.cfg, user)}
        if ftype == "call.reject":
            if not is_callee:
                raise ChatError("forbidden", "only the callee can reject")
            if call.state != "ringing":
                raise ChatError("conflict", "the call was already answered")
            await self._end(call, "rejected", me)
            return {"call": call.id, "state": "ended"}
        if ftype == "call.hangup":
            if call.state == "ringing":
                if is_caller_dev:
                    await self._end(call, "cancelled", me)
                elif is_callee:
                    await self._end(call, "rejected", me)
                else:
                    raise ChatError("forbidden", "this device is not in the call")
            elif is_caller_dev or is_callee_dev:
                await self._end(call, "hangup", me)
            else:
                raise ChatError("forbidden", "this device is not in the call")
            return {"call": call.id, "state": "ended"}
        if ftype in ("call.sdp", "call.ice"):
            if call.state != "active":
                raise ChatError("conflict", "the call is not answered yet")
            if is_caller_dev:
                peer: Device = (call.callee, call.callee_device or "")
            elif is_callee_dev:
                peer = call.caller
            else:
                raise ChatError("forbidden", "this device is not in the call")
            out = {"type": ftype, "call": call.id, **{k: v for k, v in f.items() if k != "call"}}
            self._to_device(peer, out)
            return {"call": call.id}
        raise ChatError("bad_frame", f"unknown call frame {ftype}")

    async def _end(self, call: Call, reason: str, by: Device | None) -> None:
        if self.calls.pop(call.id, None) is None:
            return
        if call.timer is not None:
            call.timer.cancel()
        duration = int(round(time.time() - call.answered)) if call.answered else 0
        frame: dict[str, Any] = {"type": "call.ended", "call": call.id, "reason": reason}
        if by is not None:
            frame["by"] = by[0]
        if call.answered:
            frame["duration"] = duration
        # everyone involved hears it, except the device whose request ended the call
        targets: list[Device] = [call.caller]
        if call.state == "active":
            targets.append((call.callee, call.callee_device or ""))
            for t in targets:
                if t != by:
                    self._to_device(t, frame)
        else:
            if call.caller != by:
                self._to_device(call.caller, frame)
            self._to_user_except(call.callee, by[1] if by and by[0] == call.callee else None, frame)
        self.hub.broker.control({"op": "call.end", "call": call.id})
        await asyncio.gather(
            self.busy.release(call.caller[0], call.id), self.busy.release(call.callee, call.id)
        )
        self.outcomes.inc(reason)
        if reason == "rejected":
            outcome = "rejected"
        elif not call.answered:  # timeout, cancelled, or its server stopped while it rang
            outcome = "missed"
        else:
            outcome = "ended"
        self._record(call, outcome, duration, reason=reason, by=by[0] if by else None)

    def _record(
        self, call: Call, outcome: str, duration: int, reason: str = "", by: int | None = None
    ) -> None:
        """The call's record in the conversation's history (a `call` message)."""
        data: dict[str, Any] = {
            "id": call.id,
            "media": call.media,
            "outcome": outcome,
            "to": call.callee,
            "reason": reason or outcome,
        }
        if outcome == "ended":
            data["duration"] = duration
        if by is not None:
            data["by"] = by
        op = Op("call", call.conv, call.caller[0], f"call-{call.id}", extra=data)

        async def go() -> None:
            try:
                await self.chat.apply(op)
            except ChatError as e:
                log.warning("call record not stored: %s", e.message)

        self._spawn(go())
