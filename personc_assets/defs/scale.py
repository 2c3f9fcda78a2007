"""Releases at data-set scale: batches as dynamic partitions, run by Dask, lineage in shards.

``personc_batches`` is the main job's release half, partitioned: each partition
of ``BATCHES`` is one batch of ``ScaleConfig.batch_size`` releases under its own
seed (``core/pipeline/batches.py``). The batch assets read the unpartitioned
upstream (``source_images``, ``factor_decompositions``, ``embedding_indexes``,
materialized once by ``personc_main`` or ``personc_refresh``) and never write
it. A backfill of N partitions is N runs; the job's executor sends their steps
to a Dask cluster (``PERSONC_DASK_SCHEDULER``, or a local cluster per run), and
a step that runs the generator asks the cluster for ``gpu_resources``.

A face is admitted against every face released so far, by any batch, under one
lock (``batches.release_lock``). With ``lineage: shards`` a batch writes its
lineage rows as Parquet shards (``core/lineage/shards.py``) instead of into the
DuckDB file; ``lineage_consolidated`` upserts them into the file.
"""

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

import dask.distributed
from dagster import (AssetExecutionContext, AssetSelection, ConfigurableResource, DagsterInstance, Definitions,
                     DynamicPartitionsDefinition, Field, InputContext, MaterializeResult, MetadataValue,
                     OutputContext, Permissive, asset, define_asset_job, executor,
                     multiple_process_executor_requirements)
from dagster._core.errors import raise_execution_interrupts
from dagster._utils import iterate_with_context
from dagster_dask.executor import DaskExecutor, dask_executor, query_on_dask_worker
from pydantic import Field as PydanticField

from ..core.lineage.shards import ShardedLineageStore, ShardSet
from ..core.pipeline import explaining, generation, judging
from ..core.pipeline.batches import batch_config, release_lock, shards_root
from ..core.pipeline.explaining import IcsReports
from ..core.pipeline.generation import GeneratedCandidates
from ..core.pipeline.indexing import EmbeddingIndexes
from ..core.pipeline.judging import GuardVerdicts
from ..core.pipeline.modeling import FactorDecompositions
from ..core.pipeline.sources import SourceSet
from .gpu import GPU_POOL, GPU_TAGS
from .reporting import progress_reporter
from .resources import LineageResource, PersonCConfig
from .value_io import AssetValueIOManager

SCALE_GROUP = "personc_scale"
BATCHES = DynamicPartitionsDefinition(name="personc_batches")
#: Scheduler address of the Dask cluster the batch job runs on (unset: a local cluster per run).
SCHEDULER_ENV = "PERSONC_DASK_SCHEDULER"


class ScaleConfig(ConfigurableResource):
    """How the batch job releases: faces per batch and where its lineage goes."""

    batch_size: int = PydanticField(default=5, description="faces released per batch (partition)")
    lineage: Literal["duckdb", "shards"] = PydanticField(
        default="duckdb", description="'duckdb': batches write the lineage file under its lock (one machine); "
        "'shards': each batch writes Parquet shards under <out_dir>/lineage_shards (many machines), "
        "merged into the file by lineage_consolidated")

    @contextlib.contextmanager
    def store(self, personc: PersonCConfig, lineage: LineageResource, partition: str) -> Iterator[Any]:
        """The lineage store batch ``partition`` reads and writes."""
        if self.lineage == "duckdb":
            yield lineage.store()
        else:
            yield ShardedLineageStore(ShardSet(shards_root(personc.workspace())), partition, lineage.database)


class BatchValueIOManager(AssetValueIOManager):
    """``AssetValueIOManager`` with one file per partition: ``<base_dir>/<asset>/<partition>.json``."""

    def _path(self, context: InputContext | OutputContext) -> Path:
        if context.has_asset_partitions:
            return Path(self.base_dir) / "/".join(context.asset_key.path) / f"{context.asset_partition_key}.json"
        return super()._path(context)


def _batch(context: AssetExecutionContext, personc: PersonCConfig, scale: ScaleConfig):
    return batch_config(personc.run_config(), context.partition_key, scale.batch_size)


GPU_STEP = dict(partitions_def=BATCHES, group_name=SCALE_GROUP, tags=GPU_TAGS, op_tags=GPU_TAGS, pool=GPU_POOL,
                io_manager_key="batch_io_manager")


@asset(kinds={"python"}, **GPU_STEP)
def batch_candidates(context: AssetExecutionContext, personc: PersonCConfig, scale: ScaleConfig,
                     lineage: LineageResource, source_images: SourceSet, factor_decompositions: FactorDecompositions,
                     embedding_indexes: EmbeddingIndexes) -> MaterializeResult[GeneratedCandidates]:
    """First candidates of one batch: ``generated_candidates`` under the batch's own seed."""
    cfg = _batch(context, personc, scale)
    with scale.store(personc, lineage, context.partition_key) as store:
        out = generation.generate_first_attempts(cfg, personc.workspace(), store, source_images,
                                                 factor_decompositions, embedding_indexes, context.run.run_id)
    return MaterializeResult(value=out, metadata={"generation_id": out.generation_id, "seed": str(cfg.seed),
                                                  "candidates": len(out.candidates)})


@asset(kinds={"python", "duckdb"}, **GPU_STEP)
def batch_verdicts(context: AssetExecutionContext, personc: PersonCConfig, scale: ScaleConfig, lineage: LineageResource,
                   source_images: SourceSet, factor_decompositions: FactorDecompositions,
                   embedding_indexes: EmbeddingIndexes,
                   batch_candidates: GeneratedCandidates) -> MaterializeResult[GuardVerdicts]:
    """One batch judged and released like ``guard_verdicts``; each face is admitted against every
    face released so far by any batch, under the workspace's release lock."""
    cfg = _batch(context, personc, scale)
    ws = personc.workspace()
    with scale.store(personc, lineage, context.partition_key) as store:
        out = judging.judge_and_release(cfg, ws, store, source_images, factor_decompositions, embedding_indexes,
                                        batch_candidates, context.run.run_id,
                                        progress_reporter(context, "released", every=1), release_lock(ws))
    return MaterializeResult(value=out, metadata={
        "released": len(out.released), "requested": cfg.num_samples, "candidates_judged": len(out.attempts),
        "pass_rate": float(out.pass_rate), "release_ids": MetadataValue.json([r.release_id for r in out.released])})


@asset(kinds={"python", "html"}, **GPU_STEP)
def batch_reports(context: AssetExecutionContext, personc: PersonCConfig, scale: ScaleConfig, lineage: LineageResource,
                  source_images: SourceSet, factor_decompositions: FactorDecompositions,
                  embedding_indexes: EmbeddingIndexes, batch_verdicts: GuardVerdicts) -> MaterializeResult[IcsReports]:
    """ICS, reports and manifest entries of one batch's releases, like ``ics_reports``."""
    cfg = _batch(context, personc, scale)
    with scale.store(personc, lineage, context.partition_key) as store:
        out = explaining.explain_releases(cfg, personc.workspace(), store, source_images, factor_decompositions,
                                          embedding_indexes, batch_verdicts, context.run.run_id,
                                          progress_reporter(context, "explain", every=1))
    return MaterializeResult(value=out, metadata={"explained": len(out.explained),
                                                  "manifest": MetadataValue.path(out.manifest)})


@asset(group_name=SCALE_GROUP, kinds={"duckdb", "parquet"}, deps=[batch_reports])
def lineage_consolidated(context: AssetExecutionContext, personc: PersonCConfig,
                         lineage: LineageResource) -> MaterializeResult[dict]:
    """Every batch's lineage shards upserted into the DuckDB file (one row per key, the newest),
    so the file answers the README's queries for every batch; running it again changes nothing."""
    shards = ShardSet(shards_root(personc.workspace()))
    counts = shards.consolidate(lineage.store())
    return MaterializeResult(value={"rows": counts, "partitions": shards.partitions()},
                             metadata={"rows": MetadataValue.json(counts), "partitions": len(shards.partitions())})


SCALE_ASSETS = (batch_candidates, batch_verdicts, batch_reports, lineage_consolidated)


class Opaque:
    """A value Dask carries without looking inside: Dask walks tuple arguments item by item and
    sizes results by iterating them, and Dagster's run records and events refuse to be iterated."""

    def __init__(self, value: Any) -> None:
        self.value = value


def run_step(dependencies: list, step_args: Opaque) -> Opaque:
    """Runs on a Dask worker: one step of a run; its events go back to the orchestrating process."""
    return Opaque(list(query_on_dask_worker(dependencies, *step_args.value)))


class BatchDaskExecutor(DaskExecutor):
    """``dagster-dask``'s executor with task keys scoped to the run.

    ``DaskExecutor`` names each task ``<job>.<step>``; Dask treats equal keys as one
    task, so two partitions of one job running at once on a shared cluster would
    receive each other's results. Here the key carries the run id (and the step's
    arguments and events travel in ``Opaque``, which current Dask does not walk). Steps tagged
    ``personc/accelerator: gpu`` ask the cluster for ``gpu_resources`` (workers
    started with ``--resources GPU=1``): the cluster runs at most as many
    generator steps at once as it has GPUs.
    """

    def __init__(self, cluster_type: str, cluster_configuration: Mapping[str, Any],
                 gpu_resources: Mapping[str, float]) -> None:
        if cluster_type not in ("existing", "local"):
            raise ValueError(f"cluster {cluster_type!r} is not supported by the batch executor: start the "
                             "cluster with its own tools (dask-jobqueue, dask-kubernetes, ...) and give its "
                             "scheduler address as cluster: {existing: {address: ...}}")
        super().__init__(cluster_type, dict(cluster_configuration))
        self.gpu_resources = dict(gpu_resources)

    def execute(self, plan_context, execution_plan):
        if not plan_context.instance.is_persistent:
            raise ValueError("the Dask executor needs a persistent Dagster instance (DAGSTER_HOME): its workers "
                             "write step events there")
        run = plan_context.dagster_run
        cluster = (self.cluster_configuration["address"] if self.cluster_type == "existing"
                   else dask.distributed.LocalCluster(**self.build_dict(plan_context.job_name)))
        with dask.distributed.Client(cluster) as client:
            futures: dict[str, Any] = {}
            for level in execution_plan.get_steps_to_execute_by_level():
                for step in level:
                    deps = [futures[k] for step_input in step.step_inputs for k in step_input.dependency_keys]
                    needs_gpu = step.tags.get("personc/accelerator") == "gpu"
                    step_args = Opaque((plan_context.reconstructable_job, run, plan_context.run_config,
                                          [step.key], plan_context.instance.get_ref(), execution_plan.known_state))
                    futures[step.key] = client.submit(
                        run_step, deps, step_args, key=f"{run.job_name}.{run.run_id}.{step.key}",
                        resources=self.gpu_resources if needs_gpu else None, pure=False)
            done = dask.distributed.as_completed(list(futures.values()), with_results=True)
            for _, events in iterate_with_context(raise_execution_interrupts, done):
                yield from events.value


@executor(name="dask", requirements=multiple_process_executor_requirements(),
          config_schema={**dask_executor.config_schema.config_type.fields,
                         "gpu_resources": Field(Permissive(), is_required=False, default_value={},
                                                description="Dask worker resources a generator step holds, "
                                                            'e.g. {"GPU": 1}')})
def batch_dask_executor(init_context):
    """Runs each step of a batch run as a task on a Dask cluster (see ``BatchDaskExecutor``)."""
    config = init_context.executor_config
    ((cluster_type, cluster_configuration),) = config["cluster"].items()
    return BatchDaskExecutor(cluster_type, cluster_configuration or {}, config.get("gpu_resources") or {})


def default_cluster() -> dict[str, Any]:
    """The executor's cluster: ``PERSONC_DASK_SCHEDULER`` when set, else a two-worker local cluster."""
    address = os.environ.get(SCHEDULER_ENV)
    if address:
        return {"existing": {"address": address}}
    return {"local": {"n_workers": 2, "threads_per_worker": 1}}


def batch_job():
    return define_asset_job(
        "personc_batches", selection=AssetSelection.assets(batch_candidates, batch_verdicts, batch_reports),
        executor_def=batch_dask_executor,
        config={"execution": {"config": {"cluster": default_cluster()}}},
        description="Release one batch per partition on the Dask cluster: candidates, guard and release, "
                    "reports. Add partitions (batches), then backfill them.")


def add_batches(instance: DagsterInstance, count: int, prefix: str = "batch-") -> list[str]:
    """Add ``count`` new batch partitions (``batch-00000``, ...) after the ones there; returns their keys."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    have = set(instance.get_dynamic_partitions(BATCHES.name))
    keys, n = [], 0
    while len(keys) < count:
        key = f"{prefix}{n:05d}"
        if key not in have:
            keys.append(key)
        n += 1
    instance.add_dynamic_partitions(BATCHES.name, keys)
    return keys


def batch_resources(out_dir: str) -> dict[str, Any]:
    return {"scale": ScaleConfig(),
            "batch_io_manager": BatchValueIOManager(base_dir=str(Path(out_dir) / "state"))}


def run_config(batch_size: int, lineage_mode: str = "duckdb", cluster: Mapping[str, Any] | None = None,
               gpu_resources: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Run config of one batch run: the scale resource and, when given, the executor's cluster."""
    execution: dict[str, Any] = {"cluster": dict(cluster or default_cluster())}
    if gpu_resources:
        execution["gpu_resources"] = dict(gpu_resources)
    return {"resources": {"scale": {"config": {"batch_size": batch_size, "lineage": lineage_mode}}},
            "execution": {"config": execution}}


#: The ``scale`` domain (``definitions.DOMAINS``); its resources come from ``batch_resources``.
defs = Definitions(assets=list(SCALE_ASSETS), jobs=[batch_job()])

__all__ = ["BATCHES", "SCALE_ASSETS", "ScaleConfig", "add_batches", "batch_job", "batch_resources", "run_config", "defs"]
