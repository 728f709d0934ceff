"""One PersonaModel's reconcile pass: look at the cluster, take the next step, record it in status.

Level-triggered: every pass starts from what the cluster says (the resource's generation and
status, the Jobs labelled with its name), never from what an earlier event said, so a pass can
run any number of times, and an operator restarted mid-training or mid-rollout carries on:

    new generation  -> stop Jobs of older generations, start (or adopt) this generation's Job
    Training        -> Job running: wait; failed: fail (retry); succeeded: gate, then roll out
    RollingOut      -> roll out through the routing table (idempotent), prune old versions from it;
                       with strategy Canary, give the new version its first share of the conversations
    Canary          -> the table follows the status' step; Prometheus' analysis advances, promotes or rolls back
    Pending         -> trained, but no serving pod is ready: look again every few seconds
    Failed          -> after the back-off, retry the failed step, up to rollout.retryLimit
    Ready           -> the routing table serves the status's version; replicas answering another are reported
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import kopf
from kubernetes.client.exceptions import ApiException

from persona_operator import analysis, metrics
from persona_operator.analysis import Judgment, Measurement
from persona_operator.canary import PROMOTED, ROLLED_BACK, SUPERSEDED, CanaryState, Move, next_move
from persona_operator.cluster import Cluster
from persona_operator.gate import Evaluation, judge, read_evaluation
from persona_operator.jobs import (
    job_generation,
    job_outcome,
    job_version,
    persona_selector,
    training_job,
)
from persona_operator.rollout import Replica, Rollout, RolloutFailed, metric_step, withdraw_version
from persona_operator.settings import Settings
from persona_operator.spec import PersonaModelSpec
from persona_operator.status import (
    BASE_NOT_SERVED,
    GATE_REJECTED,
    INVALID_SPEC,
    KNOWLEDGE_MISSING,
    ROLLOUT_FAILED,
    TRAINING_FAILED,
    Phase,
    StatusUpdate,
    condition,
    now,
    parse_time,
    rfc3339,
)
from personafleet import knowledge
from personafleet.errors import PersonaError

VERSION_DIR = re.compile(r"^v(\d+)$")
REPLICA_POLL_SECONDS = 5.0  # serving pods are not watched: how often to look for one while none is ready
KNOWLEDGE_POLL_SECONDS = 10.0  # the store is not watched: how often to look for missing knowledge files


@dataclass
class Reconciler:
    """Reconciles PersonaModels of one namespace; shared by every handler through kopf's memo."""

    settings: Settings
    cluster: Cluster
    rollout: Rollout
    retry_due: dict[str, float] = field(default_factory=dict)  # persona -> monotonic time of the next retry
    drift: dict[str, dict[str, int | None]] = field(default_factory=dict)  # persona -> pod -> version it answered

    async def reconcile(self, name: str, logger: logging.Logger) -> float | None:
        """Take the next step for PersonaModel `name`; returns seconds until a pass is due again (None: on events)."""
        body = await self.cluster.persona_model(name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        status = body.get("status") or {}
        metrics.initialize(name)
        metrics.track_training(name, _training_since(status))
        generation = body["metadata"]["generation"]
        try:
            spec = PersonaModelSpec.parse(body.get("spec") or {})
            spec.check_scheduling(self.settings.training_overrides)
            spec.check_resources(self.settings.training_max_resources)
            spec.check_canary(self.settings.prometheus_url)
        except PersonaError as exc:
            return await self._invalid(body, str(exc))
        try:
            self.settings.check_base(spec.base_model)
        except PersonaError as exc:  # the chart may gain the base: looked at again every resync
            await self._refuse(body, BASE_NOT_SERVED, str(exc))
            return None
        try:
            return await self._step(body, spec, logger)
        except (ApiException, OSError, PersonaError) as exc:
            # A step the cluster or the store refused (a Job the API server finds invalid, an
            # unreadable store, ...) is a failure like a failed Job: status, Event, back-off, retry.
            training = status.get("observedGeneration") != generation or status.get("phase") == Phase.TRAINING \
                or _failed_step(status) == TRAINING_FAILED
            return await self._fail(body, spec, TRAINING_FAILED if training else ROLLOUT_FAILED, describe(exc), logger)

    async def _step(self, body: dict, spec: PersonaModelSpec, logger: logging.Logger) -> float | None:
        status = body.get("status") or {}
        if status.get("observedGeneration") != body["metadata"]["generation"] or _waits_for_knowledge(status):
            return await self._start_training(body, spec, logger)
        phase = status.get("phase")
        if phase == Phase.TRAINING:
            return await self._track_training(body, spec, logger)
        if phase in (Phase.ROLLING_OUT, Phase.PENDING):
            return await self._roll_out(body, spec, logger)
        if phase == Phase.CANARY:
            return await self._canary(body, spec, logger)
        if phase == Phase.FAILED:
            return await self._retry(body, spec, logger)
        if phase == Phase.READY:
            return await self._keep_serving(body, spec, logger)
        return None

    # ---- training ------------------------------------------------------------------------
    async def _start_training(self, body: dict, spec: PersonaModelSpec, logger: logging.Logger, *, retry: int = 0) -> float | None:
        name, generation = body["metadata"]["name"], body["metadata"]["generation"]
        if (body.get("status") or {}).get("phase") == Phase.CANARY:
            await self._supersede_canary(body)
        status = body.get("status") or {}
        jobs = await self._owned_jobs(body)
        for job in jobs:
            if job_generation(job) != generation and job_outcome(job)[0] == "running":
                await self.cluster.delete_job(job["metadata"]["name"])
                kopf.event(body, type="Normal", reason="Superseded",
                          message=f"Stopped Job {job['metadata']['name']}: the spec changed (generation {generation})")
        # A Job this pass would create may exist already: the operator stopped after creating it.
        floor = int(status.get("latestVersion") or 0) if status.get("observedGeneration") == generation else 0
        started = [j for j in jobs if job_generation(j) == generation and job_version(j) > floor]
        if started:
            job = max(started, key=job_version)
            logger.info("Adopting Job %s started before a restart", job["metadata"]["name"])
        else:
            missing = spec.knowledge.missing(self.settings.store_path) if spec.knowledge else []
            if missing:
                return await self._knowledge_missing(body, missing)
            version = self._next_version(name, status, jobs)
            job = await self.cluster.create_job(training_job(body, spec, version, self.settings))
            metrics.JOBS_CREATED.labels(name).inc()
            kopf.event(body, type="Normal", reason="TrainingStarted",
                      message=f"Training version {version} of {name} in Job {job['metadata']['name']}")
        version = job_version(job)
        update = (
            StatusUpdate(status)
            .set(phase=Phase.TRAINING, observedGeneration=generation, latestVersion=str(version), retries=retry,
                 message=f"training version {version} in Job {job['metadata']['name']}")
            .training(version=str(version), jobName=job["metadata"]["name"],
                      startedAt=rfc3339(job["metadata"].get("creationTimestamp") or now()),
                      finishedAt=None, durationSeconds=None, evalLoss=None, evalPerplexity=None,
                      fidelity=None, leaks=None)
            .condition("Trained", False, "Training", f"Job {job['metadata']['name']} trains version {version}")
            .ready_from(status.get("servingVersion"))
        )
        await self.cluster.patch_status(name, update.patch)
        metrics.track_training(name, _training_since(update.patch))
        return None

    async def _track_training(self, body: dict, spec: PersonaModelSpec, logger: logging.Logger) -> float | None:
        name = body["metadata"]["name"]
        status = body["status"]
        training = status.get("lastTraining") or {}
        job = next((j for j in await self._owned_jobs(body) if j["metadata"]["name"] == training.get("jobName")), None)
        if job is None:
            return await self._fail(body, spec, TRAINING_FAILED, f"Job {training.get('jobName')} disappeared", logger)
        outcome, why = job_outcome(job)
        if outcome == "running":
            return None
        metrics.track_training(name, None)
        finished = rfc3339((job.get("status") or {}).get("completionTime") or _failed_at(job) or now())
        started = parse_time(training.get("startedAt") or job["metadata"].get("creationTimestamp"))
        duration = max(0.0, (parse_time(finished) - started).total_seconds()) if started else None
        update = StatusUpdate(status).training(finishedAt=finished, durationSeconds=duration)
        if duration is not None:
            metrics.TRAINING_DURATION.labels(name, outcome).observe(duration)
        if outcome == "failed":
            await self.cluster.patch_status(name, update.patch)
            body["status"] = {**status, "lastTraining": {**training, **update.patch["lastTraining"]}}
            return await self._fail(body, spec, TRAINING_FAILED, f"Job {job['metadata']['name']} failed: {why}", logger)

        version = int(status["latestVersion"])
        try:
            evaluation = read_evaluation(self.settings.store_path, name, version)
        except PersonaError as exc:
            await self.cluster.patch_status(name, update.patch)
            return await self._fail(body, spec, TRAINING_FAILED, str(exc), logger)
        verdict = judge(evaluation, self._serving_evaluation(name, status, logger), spec.rollout)
        update.training(evalLoss=evaluation.loss, evalPerplexity=evaluation.perplexity,
                        fidelity=evaluation.fidelity, leaks=evaluation.leaks)
        update.condition("Trained", True, "TrainingSucceeded", f"version {version}: {verdict.message}")
        if not verdict.passed:
            metrics.ROLLOUTS.labels(name, "rejected").inc()
            update.set(phase=Phase.FAILED, message=f"version {version} not rolled out: {verdict.message}")
            update.condition("RolledOut", False, GATE_REJECTED, verdict.message)
            await self.cluster.patch_status(name, update.patch)
            kopf.warn(body, reason=GATE_REJECTED, message=f"Version {version} not rolled out: {verdict.message}")
            return None
        update.set(phase=Phase.ROLLING_OUT, message=f"rolling out version {version}")
        update.condition("RolledOut", False, "RollingOut", f"rolling out version {version}")
        await self.cluster.patch_status(name, update.patch)
        body["status"] = {**status, **update.patch, "lastTraining": {**training, **update.patch["lastTraining"]}}
        return await self._roll_out(body, spec, logger)

    def _serving_evaluation(self, name: str, status: dict, logger: logging.Logger) -> Evaluation | None:
        serving = status.get("servingVersion")
        if not serving:
            return None
        try:
            return read_evaluation(self.settings.store_path, name, int(serving))
        except PersonaError as exc:
            logger.warning("Gate compares with nothing: the serving version's report is unreadable: %s", exc)
            return None

    # ---- rollout -------------------------------------------------------------------------
    async def _roll_out(self, body: dict, spec: PersonaModelSpec, logger: logging.Logger, *,
                        promote: bool = False) -> float | None:
        """Make the latest version serve everywhere (`promote`: a canary that passed every step, already
        smoke-tested), or, with strategy Canary and a version serving, start a canary."""
        name, status = body["metadata"]["name"], body["status"]
        version = int(status["latestVersion"])
        replicas = await self._replicas(spec)
        if not replicas:  # e.g. serving still starting at install: wait, without spending retries
            selector = self.settings.replica_selector(spec.base_model)  # the fleet of the persona's base
            message = f"version {version} waits for a ready TorchServe pod ({selector})"
            if status.get("phase") != Phase.PENDING:
                update = (StatusUpdate(status).set(phase=Phase.PENDING, message=message)
                          .condition("RolledOut", False, "NoReplicas", message))
                await self.cluster.patch_status(name, update.patch)
            return REPLICA_POLL_SECONDS
        serving = status.get("servingVersion")
        if not promote and spec.rollout.strategy == "Canary" and serving and int(serving) != version:
            return await self._start_canary(body, spec, replicas, version, int(serving), logger)
        try:
            pruned = await self.rollout.roll_out(name, version, replicas, smoke_test=spec.rollout.smoke_test and not promote,
                                                 previous=int(serving) if serving else None,
                                                 keep=spec.rollout.keep_versions)
        except RolloutFailed as exc:
            return await self._rollout_failed(body, spec, version, exc, logger)
        finished = parse_time((status.get("lastTraining") or {}).get("finishedAt"))
        if finished is not None and not promote:  # a canary's time is the people's, not the rollout's
            metrics.TIME_TO_SERVING.labels(name).observe(max(0.0, time.time() - finished.timestamp()))
        metrics.ROLLOUTS.labels(name, "succeeded").inc()
        message = f"version {version} serves on {len(replicas)} replica(s)" + (" after its canary" if promote else "")
        update = (
            StatusUpdate(status)
            .set(phase=Phase.READY, servingVersion=str(version), retries=0, message=message,
                 servingFacts=self._facts(name, version, logger))
            .condition("RolledOut", True, "RolledOut", message)
            .ready_from(str(version))
        )
        if promote:
            metrics.CANARY_WEIGHT.labels(name).set(0)
            update.condition("Canary", True, PROMOTED, message)
        else:
            update.set(canary=None)  # an earlier canary's step and weights say nothing about this version
        await self.cluster.patch_status(name, update.patch)
        self.retry_due.pop(name, None)
        kopf.event(body, type="Normal", reason="RolledOut",
                  message=message + (f"; no longer pinnable: {', '.join(f'v{v}' for v in pruned)}" if pruned else ""))
        return None

    async def _rollout_failed(self, body: dict, spec: PersonaModelSpec, version: int, exc: RolloutFailed,
                              logger: logging.Logger) -> float | None:
        """A rollout or canary step failed and `version` was withdrawn: the serving one answers everything."""
        name, serving = body["metadata"]["name"], body["status"].get("servingVersion")
        metrics.ROLLOUTS.labels(name, "failed").inc()
        metrics.ROLLOUT_FAILURES.labels(name, metric_step(exc.step)).inc()
        metrics.CANARY_WEIGHT.labels(name).set(0)
        kept = f"version {serving} keeps serving" if serving else "no version serves"
        return await self._fail(body, spec, ROLLOUT_FAILED, f"version {version}: {exc}; {kept}", logger)

    # ---- canary (issue 23) ---------------------------------------------------------------
    async def _start_canary(self, body: dict, spec: PersonaModelSpec, replicas: list[Replica], version: int,
                            previous: int, logger: logging.Logger) -> float | None:
        """Smoke-test the new version, then give it the first step's share of the conversations."""
        name, status = body["metadata"]["name"], body["status"]
        state = CanaryState.first(version, previous, spec.rollout.canary, _utcnow())
        try:
            await self.rollout.start_canary(name, version, replicas, smoke_test=spec.rollout.smoke_test,
                                            previous=previous, weights=state.weights)
        except RolloutFailed as exc:
            return await self._rollout_failed(body, spec, version, exc, logger)
        metrics.CANARY_WEIGHT.labels(name).set(state.weight)
        waiting = "waiting for the first analysis"
        update = (StatusUpdate(status)
                  .set(phase=Phase.CANARY, canary=state.status(), message=f"{state.describe()}; {waiting}")
                  .condition("RolledOut", False, "Canary", state.describe())
                  .condition("Canary", None, "Started", waiting))
        await self.cluster.patch_status(name, update.patch)
        kopf.event(body, type="Normal", reason="CanaryStarted", message=state.describe())
        return spec.rollout.canary.analysis.interval_seconds

    async def _canary(self, body: dict, spec: PersonaModelSpec, logger: logging.Logger) -> float | None:
        """One look at a canary: the table follows the status' step, then Prometheus' analysis decides
        whether to wait, advance (the status first, then the table), promote or roll back."""
        name, status = body["metadata"]["name"], body["status"]
        state = CanaryState.from_status(status["canary"])
        try:
            if state.promoting:
                return await self._roll_out(body, spec, logger, promote=True)
            await self._follow(name, spec, state, logger)
            now, canary = _utcnow(), spec.rollout.canary
            async with httpx.AsyncClient() as http:
                measurement = await analysis.measure(http, self.settings.prometheus_url or "", canary.analysis.queries,
                                                     name, state.version, state.elapsed(now))
            judgment = analysis.judge(measurement, canary.analysis)
            metrics.CANARY_ANALYSES.labels(name, judgment.reason).inc()
            move = next_move(state, judgment, canary, now)
            if move.action == "rollback":
                return await self._roll_back_canary(body, state, move, measurement, judgment, now, logger)
            update = StatusUpdate(status)
            if move.action == "advance":
                state = state.next(canary, now)
                update.condition("RolledOut", False, "Canary", state.describe())
                kopf.event(body, type="Normal", reason="CanaryAdvanced", message=f"{state.describe()}: {judgment.message}")
            update.set(canary=state.status(measurement, judgment, now), message=f"{state.describe()}; {judgment.message}")
            update.condition("Canary", True if judgment.outcome == "pass" else None, judgment.reason, judgment.message)
            await self.cluster.patch_status(name, update.patch)
            if move.action == "wait":
                return move.after
            body["status"] = {**status, **update.patch}  # the step is recorded: now into force
            if state.promoting:
                return await self._roll_out(body, spec, logger, promote=True)
            await self._follow(name, spec, state, logger)
            return canary.analysis.interval_seconds
        except RolloutFailed as exc:
            return await self._rollout_failed(body, spec, state.version, exc, logger)

    async def _follow(self, name: str, spec: PersonaModelSpec, state: CanaryState, logger: logging.Logger) -> None:
        """The routing table shares the conversations as the step says (written only when it does not:
        a new step, an operator stopped between the status and the table, a hand edit)."""
        if await self.rollout.follow(name, state.version, await self._replicas(spec), previous=state.previous,
                                     weights=state.weights):
            logger.info("Routing table set to step %d of %s's canary: %s", state.step, name, state.weights)
        metrics.CANARY_WEIGHT.labels(name).set(state.weight)

    async def _roll_back_canary(self, body: dict, state: CanaryState, move: Move, measurement: Measurement,
                                judgment: Judgment, now: datetime, logger: logging.Logger) -> float | None:
        """The previous version answers every conversation again (the canary's weight 0, unlisted); Failed
        with the reason, not retried: the same version would be judged the same way. A table that
        cannot be written keeps the canary on, and the next pass tries again."""
        name = body["metadata"]["name"]
        try:
            await self.rollout.route(lambda table: withdraw_version(table, name, state.version, state.previous))
        except (PersonaError, OSError) as exc:
            logger.error("Could not roll back %s's canary of v%s: %s; retrying", name, state.version, exc)
            return REPLICA_POLL_SECONDS
        metrics.ROLLOUTS.labels(name, "rolled_back").inc()
        metrics.CANARY_WEIGHT.labels(name).set(0)
        message = (f"version {state.version} rolled back at step {state.step}/{state.steps}: {move.message}; "
                   f"version {state.previous} answers every conversation")
        status = body["status"]
        update = (StatusUpdate(status)
                  .set(phase=Phase.FAILED, canary=replace(state, weight=0).status(measurement, judgment, now),
                       message=message)
                  .condition("Canary", False, move.reason, move.message)
                  .condition("RolledOut", False, ROLLED_BACK, message)
                  .ready_from(status.get("servingVersion")))
        await self.cluster.patch_status(name, update.patch)
        kopf.warn(body, reason=ROLLED_BACK, message=message)
        logger.warning("%s: %s", ROLLED_BACK, message)
        return None

    async def _supersede_canary(self, body: dict) -> None:
        """A spec edit during a canary: the canary ends (the previous version answers everything) before
        the new generation trains."""
        name, status = body["metadata"]["name"], body["status"]
        state = CanaryState.from_status(status["canary"])
        await self.rollout.route(lambda table: withdraw_version(table, name, state.version, state.previous))
        metrics.CANARY_WEIGHT.labels(name).set(0)
        message = (f"canary of version {state.version} rolled back: the spec changed (generation "
                   f"{body['metadata']['generation']}); version {state.previous} answers every conversation")
        update = (StatusUpdate(status).set(canary={**status["canary"], "weight": 0,
                                                   "weights": replace(state, weight=0).status()["weights"]})
                  .condition("Canary", False, SUPERSEDED, message))
        await self.cluster.patch_status(name, update.patch)
        body["status"] = {**status, **update.patch}
        kopf.event(body, type="Normal", reason=SUPERSEDED, message=message)

    async def _replicas(self, spec: PersonaModelSpec) -> list[Replica]:
        """The ready serving pods of the fleet of the persona's base."""
        pods = await self.cluster.ready_pods(self.settings.replica_selector(spec.base_model))
        return [Replica.from_pod(p, self.settings) for p in pods]

    async def _keep_serving(self, body: dict, spec: PersonaModelSpec, logger: logging.Logger) -> None:
        """Level-triggered, also when Ready: the routing table serves `servingVersion` (a table edited by
        hand or restored from a backup is put back), and every replica answers as it (one that does not
        is reported: a Warning Event when the set of such replicas changes, and a gauge). Problems are
        logged and looked at again next pass; the status stays Ready."""
        name, serving = body["metadata"]["name"], (body.get("status") or {}).get("servingVersion")
        if not serving:
            return None
        version = int(serving)
        try:
            before = await self.rollout.restore(name, version)
        except (PersonaError, OSError) as exc:
            logger.warning("Could not check the routing table for %s v%s: %s", name, version, exc)
            return None
        if before is not None:
            metrics.ROUTING_CORRECTIONS.labels(name).inc()
            said = f"version {before}" if before else "nothing"
            kopf.event(body, type="Normal", reason="Resynced",
                       message=f"routing table put back to version {version} (it routed {name} to {said})")
            logger.info("Routing table put back to %s v%s (it said %s)", name, version, said)
        answers = await self.rollout.answers(name, await self._replicas(spec))
        drifted = {pod: answer for pod, answer in answers.items() if answer != version}
        metrics.DRIFTED_REPLICAS.labels(name).set(len(drifted))
        seen = {pod: answer if isinstance(answer, int) else None for pod, answer in drifted.items()}  # not error texts
        if seen != self.drift.get(name, {}):
            if drifted:
                detail = "; ".join(f"{pod} answers as version {a}" if isinstance(a, int) else f"{pod}: {a}"
                                   for pod, a in sorted(drifted.items()))
                kopf.warn(body, reason="ReplicaDrift", message=f"version {version} is routed, but {detail}")
                logger.warning("Replicas of %s not answering as v%s: %s", name, version, detail)
            else:
                logger.info("Every replica answers %s as v%s again", name, version)
        self.drift[name] = seen
        return None

    # ---- failure and retries -------------------------------------------------------------
    async def _fail(self, body: dict, spec: PersonaModelSpec, reason: str, detail: str,
                    logger: logging.Logger) -> float | None:
        """Record a failure; if retries are left, schedule the failed step again after a back-off."""
        name, status, generation = body["metadata"]["name"], body.get("status") or {}, body["metadata"]["generation"]
        # A new generation that failed before its first status write starts counting retries afresh.
        retries = int(status.get("retries") or 0) if status.get("observedGeneration") == generation else 0
        limit = spec.rollout.retry_limit
        message = detail
        delay = None
        if retries < limit:
            delay = self.settings.retry_backoff_seconds * 2**retries
            message += f"; retry {retries + 1}/{limit} in {delay:g} s"
            self.retry_due[name] = asyncio.get_running_loop().time() + delay
        else:
            message += f"; no retries left ({limit})" if limit else ""
        update = StatusUpdate(status).set(phase=Phase.FAILED, observedGeneration=generation, retries=retries, message=message)
        if reason == TRAINING_FAILED:
            update.condition("Trained", False, reason, detail)
        else:
            update.condition("RolledOut", False, reason, detail)
        update.ready_from(status.get("servingVersion"))
        await self.cluster.patch_status(name, update.patch)
        kopf.warn(body, reason=reason, message=message)
        logger.warning("%s: %s", reason, message)
        return delay

    async def _retry(self, body: dict, spec: PersonaModelSpec, logger: logging.Logger) -> float | None:
        name, status = body["metadata"]["name"], body["status"]
        retries = int(status.get("retries") or 0)
        step = _failed_step(status)
        if step is None or retries >= spec.rollout.retry_limit:
            return None
        # After a restart the back-off is not remembered: the retry runs at once (the count still holds).
        remaining = self.retry_due.get(name, 0.0) - asyncio.get_running_loop().time()
        if remaining > 0:
            return remaining
        self.retry_due.pop(name, None)
        logger.info("Retry %d/%d of %s for %s", retries + 1, spec.rollout.retry_limit, step, name)
        if step == TRAINING_FAILED:
            body["status"] = {**status, "retries": retries + 1}  # what a failure of this attempt counts from
            return await self._start_training(body, spec, logger, retry=retries + 1)
        update = StatusUpdate(status).set(phase=Phase.ROLLING_OUT, retries=retries + 1,
                                          message=f"retrying the rollout of version {status['latestVersion']}")
        await self.cluster.patch_status(name, update.patch)
        body["status"] = {**status, **update.patch}
        return await self._roll_out(body, spec, logger)

    async def _invalid(self, body: dict, message: str) -> None:
        await self._refuse(body, INVALID_SPEC, message)
        return None

    async def _knowledge_missing(self, body: dict, missing: list[str]) -> float:
        """No Job that is bound to fail: say which knowledge files are missing, look again later."""
        message = (f"knowledge files not in the model store ({self.settings.store_path}): {', '.join(missing)}; "
                   "training starts once they are there")
        await self._refuse(body, KNOWLEDGE_MISSING, message)
        return KNOWLEDGE_POLL_SECONDS

    async def _refuse(self, body: dict, reason: str, message: str) -> None:
        """Failed before any Job, the serving version untouched; said once per generation and message."""
        status = body.get("status") or {}
        if status.get("observedGeneration") == body["metadata"]["generation"] and status.get("message") == message:
            return
        update = (StatusUpdate(status)
                  .set(phase=Phase.FAILED, observedGeneration=body["metadata"]["generation"], message=message)
                  .condition("Trained", False, reason, message)
                  .ready_from(status.get("servingVersion")))
        await self.cluster.patch_status(body["metadata"]["name"], update.patch)
        kopf.warn(body, reason=reason, message=message)

    # ---- cluster state -------------------------------------------------------------------
    async def _owned_jobs(self, body: dict) -> list[dict[str, Any]]:
        """This resource's training Jobs (not those of a deleted namesake that the GC has yet to remove)."""
        uid = body["metadata"]["uid"]
        jobs = await self.cluster.jobs(persona_selector(body["metadata"]["name"]))
        return [j for j in jobs if any(ref.get("uid") == uid for ref in j["metadata"].get("ownerReferences") or [])]

    def _facts(self, name: str, version: int, logger: logging.Logger) -> int:
        """How many facts the version folder carries (`kubectl describe pm`: status.servingFacts)."""
        try:
            return knowledge.count(Path(self.settings.store_path) / name / f"v{version}")
        except PersonaError as exc:
            logger.warning("Cannot count the facts of %s v%s: %s", name, version, exc)
            return 0

    def _next_version(self, name: str, status: dict, jobs: list[dict]) -> int:
        """One above every version the status, the Jobs or the model store know about."""
        known = [int(status.get("latestVersion") or 0), int(status.get("servingVersion") or 0)]
        known += [job_version(j) for j in jobs]
        store = Path(self.settings.store_path) / name
        if store.is_dir():
            known += [int(m.group(1)) for p in store.iterdir() if (m := VERSION_DIR.match(p.name))]
        return max(known) + 1


def describe(exc: ApiException | OSError | PersonaError) -> str:
    """One line for the status: the API server's own message (it names the object and field), or
    what the store or a step said."""
    if isinstance(exc, ApiException):
        try:
            message = json.loads(exc.body or "{}").get("message")
        except (ValueError, AttributeError):
            message = None
        return f"the API server refused a request ({exc.status} {exc.reason}): {message or exc.body or 'no details'}"
    if isinstance(exc, OSError):
        return f"the model store is unreadable: {exc}"
    return str(exc)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _failed_at(job: dict) -> str | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Failed" and c.get("status") == "True":
            return c.get("lastTransitionTime")
    return None


def _training_since(status: dict) -> float | None:
    """Unix time the current training began, while the phase is Training (the stuck-training alert's input)."""
    if status.get("phase") != Phase.TRAINING:
        return None
    started = parse_time((status.get("lastTraining") or {}).get("startedAt"))
    return started.timestamp() if started else None


def _waits_for_knowledge(status: dict) -> bool:
    trained = condition(status, "Trained")
    return status.get("phase") == Phase.FAILED and bool(trained) and trained["reason"] == KNOWLEDGE_MISSING


def _failed_step(status: dict) -> str | None:
    """Which step a Failed resource may retry: training, rollout, or none (gate, invalid spec)."""
    trained, rolled_out = condition(status, "Trained"), condition(status, "RolledOut")
    if trained and trained["status"] == "False" and trained["reason"] == TRAINING_FAILED:
        return TRAINING_FAILED
    if rolled_out and rolled_out["status"] == "False" and rolled_out["reason"] == ROLLOUT_FAILED:
        return ROLLOUT_FAILED
    return None
