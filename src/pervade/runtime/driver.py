"""The driver: one thread that feeds Dask events to the core and carries out its decisions.

Dask reports through callbacks on its own threads (future done, topic messages); those only
put a message on a queue. Everything else, the core, the journal and the output files,
is touched by the driver thread alone.
"""

from __future__ import annotations

import concurrent.futures
import queue
import secrets
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from distributed import Client, Future

from pervade.core import (
    Abort,
    CancelTask,
    ContextState,
    ContextStateChanged,
    Decision,
    Dispatcher,
    Event,
    FailItems,
    Item,
    ItemRef,
    ItemsSubmitted,
    LoadContext,
    RequeueItems,
    RestartWorker,
    RunTask,
    ScaleAdvice,
    StageContext,
    TaskFailed,
    TaskFinished,
    TaskProgressed,
    WorkerClassified,
    WorkerDraining,
    WorkerJoined,
    WorkerLeft,
)
from pervade.core.accounting import Ledger
from pervade.core.load_costs import parse_tier
from pervade.journal import Accepted, Journal, Outcome
from pervade.runtime.driver_config import DriverConfig as DriverConfig  # re-exported
from pervade.runtime.driver_config import RunAborted as RunAborted  # re-exported
from pervade.runtime.fetching import error_of, fetch_later, is_lost_worker
from pervade.runtime.inputs import InputProblem, SourceItem, next_portion
from pervade.runtime.job import Job
from pervade.runtime.membership import register_plugin, warm_contexts, worker_addresses
from pervade.runtime.outcomes import Outcomes
from pervade.runtime.output import ResultSink
from pervade.runtime.prefetching import Answer, Prefetches
from pervade.runtime.progress import Progress
from pervade.runtime.stats import RunStats
from pervade.runtime.submit import restart_worker, submit_load, submit_task
from pervade.worker.eviction import DRAIN_TOPIC, EvictionPlugin
from pervade.worker.plugin import STATE_TOPIC, ContextHostPlugin
from pervade.worker.tasks import SLICE_TOPIC, TaskReport

Observer = Callable[[RunStats], None]
# What workers tell the driver on their own, by event topic: the message kind of each.
_TOPICS = {STATE_TOPIC: "state", DRAIN_TOPIC: "drain", SLICE_TOPIC: "slice"}


class Driver:
    def __init__(
        self,
        client: Client,
        job: Job,
        journal: Journal,
        sink: ResultSink,
        stats: RunStats,
        config: DriverConfig | None = None,
        observer: Observer | None = None,
        input_name: str | None = None,
    ) -> None:
        """`input_name`: the file the items come from, named in their error records."""
        self.client = client
        self.job = job
        self.journal = journal
        self.stats = stats
        self.outcomes = Outcomes(journal, sink, stats, job.function_name, input_name)
        self.ledger = Ledger()
        self.config = config or DriverConfig()
        self.observer = observer
        self.core = Dispatcher(job.dispatch)
        self._context = job.context.id
        self._run = secrets.token_hex(4)  # task keys stay unique across reruns on one cluster
        self._progress = Progress(self._run)
        self._messages: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._futures: dict[str, Future[TaskReport]] = {}
        self._workers: set[str] = set()
        self._states: dict[tuple[str, str], ContextState] = {}
        self._classes: dict[str, str] = {}  # each worker's GPU class, once it said
        self._last_load_error = ""
        self._polled = False
        self._loads: dict[tuple[str, str], Future[float]] = {}
        self._stages = Prefetches()
        self._started = time.monotonic()

    # -- the loop --------------------------------------------------------------------

    def run(self, source: Iterator[SourceItem | InputProblem]) -> Iterator[list[Accepted]]:
        """Run to the end, yielding each batch of newly accepted outcomes."""
        self._started = time.monotonic()
        run_started = self.journal.start_run(self._run)
        register_plugin(self.client, ContextHostPlugin())
        register_plugin(self.client, EvictionPlugin(self.config.grace_seconds))
        for topic, kind in _TOPICS.items():
            self.client.subscribe_topic(topic, partial(self._put, kind))
        finished = self.journal.finished_ids()
        self.stats.resumed = len(finished)
        exhausted = False
        next_poll = next_observe = 0.0
        try:
            while True:
                now = time.monotonic()
                if now >= next_poll:
                    self._poll_membership()
                    next_poll = now + self.config.membership_poll
                if not exhausted and self.core.pending < self.config.window // 2:
                    exhausted = self._feed(source, finished)
                if exhausted and self.core.is_idle:
                    break
                try:
                    message = self._messages.get(timeout=0.1)
                except queue.Empty:
                    pass
                else:
                    self._on_message(*message)
                    # Now, not at the next message: a future held keeps its report on its
                    # worker, and a draining worker leaves once its reports are let go.
                    del message
                if self.outcomes.accepted:
                    yield self.outcomes.take()
                if now >= next_observe:
                    self._observe()
                    next_observe = now + self.config.observe_every
        finally:
            for topic in _TOPICS:
                self.client.unsubscribe_topic(topic)
            for future in self._futures.values():
                future.cancel()
            self._futures.clear()
            self.stats.rerun_items = self.journal.rerun_items(since=run_started)
            self._observe()
            self.journal.end_run(self._run, self.stats.accounts())

    def _now(self) -> float:
        return time.monotonic() - self._started

    def _put(self, kind: str, payload: Any) -> None:
        self._messages.put((kind, payload))

    def _observe(self) -> None:
        self.stats.workers = len(self._workers)
        self.stats.take_dispatch(self.core.stats)
        self.stats.goodput = self.ledger.snapshot(self._now())
        self.stats.live_contexts = sum(1 for s in self._states.values() if s.is_live)
        self.stats.sample(self._now())
        if self.observer is not None:
            self.observer(self.stats)

    # -- events in -------------------------------------------------------------------

    def _handle(self, event: Event) -> None:
        for decision in self.core.handle(event, self._now()):
            self._carry_out(decision)

    def _feed(self, source: Iterator[SourceItem | InputProblem], finished: set[str]) -> bool:
        portion = next_portion(source, finished, self.config.window)
        if portion.problems:
            self.outcomes.accept([(p.key, Outcome.ERROR, p.as_record()) for p in portion.problems])
        if portion.items:
            self.outcomes.window.update((entry.id, entry) for entry in portion.items)
            self.journal.register_items([(entry.id, entry.line) for entry in portion.items])
            refs = tuple(ItemRef(entry.id, entry.cost) for entry in portion.items)
            self._handle(ItemsSubmitted(self._context, refs))
        return portion.exhausted

    def _poll_membership(self) -> None:
        current = worker_addresses(self.client)
        for worker in sorted(current - self._workers):
            self._workers.add(worker)
            self.ledger.joined(worker, self._now())
            self.journal.record_worker_event(worker, "joined")
            # Only workers that were there before this driver can hold warm contexts (a
            # driver reconnecting); later ones are new processes, never asked, so a worker
            # dying as it joins cannot stall the driver on the question.
            live = [] if self._polled else warm_contexts(self.client, worker)
            for context in live:
                self._states[(worker, context)] = ContextState.WARM
            self._handle(WorkerJoined(worker, tuple(live)))
        self._polled = True
        for worker in sorted(self._workers - current):
            self._workers.discard(worker)
            self.ledger.left(worker, self._now())
            self.journal.record_worker_event(worker, self.core.departure(worker))
            for key in [k for k in self._loads if k[0] == worker]:
                self._loads.pop(key).cancel()
            self._stages.left(worker)
            self._classes.pop(worker, None)
            for key in [k for k in self._states if k[0] == worker]:
                del self._states[key]
            self._handle(WorkerLeft(worker))

    def _on_message(self, kind: str, payload: Any) -> None:
        if kind == "state":
            _timestamp, message = payload
            worker, context = message["worker"], message["context"]
            state = ContextState(message["state"])
            if worker not in self._workers:
                return
            named = message.get("gpu_class") or ""
            if named and self._classes.get(worker) != named:
                if worker not in self._classes:
                    self.stats.gpu_classes[named] += 1
                self._classes[worker] = named
                self._handle(WorkerClassified(worker, named))
            self._states[(worker, context)] = state
            key = (worker, context)
            staging = key in self._stages and key not in self._loads
            if state is not ContextState.FETCHING:
                self._stages.ended(key)  # the prefetch ended, or a build took it over
            if state is ContextState.STAGED:
                self.stats.staged += 1
            # States reach the core from these messages, which arrive in the order the
            # worker sent them (a future's callback may overtake them). A failed build
            # alone is reported by the load future, so that it is never counted twice; a
            # failed prefetch has no other report.
            if state is not ContextState.FAILED or staging:
                seconds = message.get("load_seconds")
                if state is ContextState.WARM and seconds:
                    self._record_load(worker, context, float(seconds), message)
                tier = parse_tier(message.get("tier"))  # absent from older workers
                self._handle(ContextStateChanged(worker, context, state, seconds, tier))
        elif kind == "drain":
            _timestamp, message = payload
            self._handle(WorkerDraining(message["worker"]))
        elif kind == "slice":
            self._slice_done(payload[1])
        elif kind == "task":
            self._task_done(*payload)
        elif kind == "load":
            self._load_done(*payload)
        elif kind == "stage":
            self._stage_done(*payload)

    def _fetch(self, kind: str, key: Any, future: Future[Any]) -> None:
        """On Dask's callback thread: fetch without blocking; the driver thread handles it."""
        fetch_later(self.client, partial(self._put_fetched, kind, key, future), future)

    def _put_fetched(
        self, kind: str, key: Any, future: Future[Any], fetched: concurrent.futures.Future[Any]
    ) -> None:
        self._put(kind, (key, future, fetched))

    def _task_done(
        self,
        task: str,
        future: Future[TaskReport],
        fetched: concurrent.futures.Future[TaskReport] | None,
    ) -> None:
        if self._futures.get(task) is not future:
            return  # cancelled by a decision earlier: its items are already back in the queue
        del self._futures[task]
        error = error_of(fetched)
        if fetched is not None and not fetched.cancelled() and error is None:
            self._report(task, fetched.result())
            return
        # The task raised, or its report was lost (or cancelled by Dask) with its worker.
        evicted = (
            error is None
            or is_lost_worker(error)
            or self.core.task_worker(task) not in worker_addresses(self.client)
        )
        described = "lost with its worker" if error is None else f"{type(error).__name__}: {error}"
        lost_as = self._progress.lost_as(task)
        self._progress.settle(task)
        self.journal.end_attempts(task, lost_as if evicted else "failed")
        self.ledger.lost(task, self._now())
        self._handle(TaskFailed(task, described, evicted))

    def _slice_done(self, message: dict[str, Any]) -> None:
        got = self._progress.read(message)
        if got is None or got.task not in self._futures:
            return  # another run's, or its task ended: the report covered these outcomes
        if not got.outcomes:
            self._progress.booked(got)  # it began
            self.journal.begin_attempts(got.task)
            return
        records = [self.outcomes.record(item_id, value) for item_id, value in got.outcomes]
        kept = self.outcomes.accept(records, got.task)
        self._progress.booked(got)
        self.stats.tokens += got.tokens
        self.stats.infer_seconds += got.seconds
        self.ledger.progressed(got.task, self._now(), got.seconds, kept, len(records))
        self._handle(TaskProgressed(got.task, tuple(item_id for item_id, _ in got.outcomes)))

    def _report(self, task: str, report: TaskReport) -> None:
        sent = self._progress.settle(task)
        self.stats.tasks += 1
        self.stats.tokens += max(0, report.tokens - sent.tokens)
        self.stats.infer_seconds += max(0.0, report.infer_seconds - sent.seconds)
        self.stats.oom_splits += report.oom_splits
        records = [self.outcomes.record(item_id, value) for item_id, value in report.outcomes]
        kept = self.outcomes.accept(records, task)
        now, ran = self._now(), len(records)
        self.ledger.reported(task, now, report.infer_seconds, kept, ran, report.failed_seconds)
        self._handle(
            TaskFinished(task, report.unfinished, report.failed, report.error, report.restart)
        )

    def _load_done(
        self,
        key: tuple[str, str],
        future: Future[float],
        fetched: concurrent.futures.Future[float] | None,
    ) -> None:
        # Success is reported by the worker's "warm" message, with the seconds it took.
        worker, context = key
        self._loads.pop(key, None)
        error = error_of(fetched)
        if error is not None and worker in self._workers:
            self._last_load_error = f"{worker}: {type(error).__name__}: {error}"
            self._states[(worker, context)] = ContextState.FAILED
            self._handle(ContextStateChanged(worker, context, ContextState.FAILED))

    def _stage_done(self, key: tuple[str, str], future: Answer) -> None:
        state = self._stages.answer(key, future)
        if state is None or key in self._loads or key[0] not in self._workers:
            return  # nothing to tell, or a build under way there reports for itself
        if state is not ContextState.FAILED:
            self._states[key] = state
        self._handle(ContextStateChanged(*key, state))

    def _record_load(self, worker: str, context: str, seconds: float, got: dict[str, Any]) -> None:
        self.stats.context_loads += 1
        self.stats.load_seconds += seconds
        self.ledger.loaded(worker, seconds, self._now())
        tier, moved = got.get("tier"), int(got.get("bytes") or 0)  # absent from older workers
        self.stats.load_tiers[tier or "unknown"] += 1
        self.journal.record_context_load(worker, context, seconds, tier, moved)

    # -- decisions out ---------------------------------------------------------------

    def _carry_out(self, decision: Decision) -> None:
        match decision:
            case RunTask(task=task, worker=worker, items=ids):
                # An item whose outcome arrived meanwhile (a late copy) has left the window.
                window = self.outcomes.window
                items = [Item(i, window[i].data) for i in ids if i in window]
                if not items:
                    self._handle(TaskFinished(task))
                    return
                self.journal.start_attempts(task, worker, ids)
                self.ledger.started(task, worker, self._now())
                future = submit_task(self.client, self.job, self._progress.key(task), worker, items)
                self._futures[task] = future
                future.add_done_callback(partial(self._fetch, "task", task))
            case LoadContext(worker=worker, context=context):
                key = f"pervade-{self._run}-load-{context[:12]}-{secrets.token_hex(3)}"
                loading = submit_load(self.client, self.job, key, worker)
                self._loads[(worker, context)] = loading
                loading.add_done_callback(partial(self._fetch, "load", (worker, context)))
            case StageContext(worker=worker, context=context):
                # The core knows only the contexts this driver submitted: the job's.
                assert context == self._context, context
                self.stats.prefetches += 1
                self._stages.ask(self.client, self.job.context, worker, partial(self._put, "stage"))
            case CancelTask(task=task):
                cancelled = self._futures.pop(task, None)
                if cancelled is not None:
                    cancelled.cancel()
                self._progress.settle(task)
                # A speculative copy that lost: whatever it ran is duplicate work. (Attempts
                # the dispatcher requeued were ended with their reason just before.)
                self.journal.end_attempts(task, "cancelled")
                self.ledger.lost(task, self._now())
            case RequeueItems(task=task, items=ids, reason=reason):
                self.stats.requeued += len(ids)
                if reason == "evicted":
                    reason = self._progress.lost_as(task)
                self.journal.end_attempts(task, reason, ids)
            case FailItems(items=ids, error=error):
                self.outcomes.accept([self.outcomes.error(i, error, "task") for i in ids])
            case RestartWorker(worker=worker, reason=reason):
                restart_worker(self.client, worker, reason)
            case ScaleAdvice(reason=reason):
                self.stats.advice = reason  # shown in the summary; scaling is the user's call
            case Abort(reason=reason):
                detail = f"; last error: {self._last_load_error}" if self._last_load_error else ""
                raise RunAborted(reason + detail)
