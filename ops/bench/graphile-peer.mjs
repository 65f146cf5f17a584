// The graphile-worker peer of `courier-bench jobs --peer graphile`: drains N no-op jobs with
// graphile-worker on the same database and prints `jobs_per_s=<rate>`.
//
// Usage: DATABASE_URL=… node graphile-peer.mjs <jobs> <defaults|tuned>
//   defaults: graphile-worker's defaults (concurrency 10, a fetch and a completion per job)
//   tuned:    a 100-job local queue (batched fetch) and batched completion
// Run from a directory where `graphile-worker` is installed (the bench uses .data/graphile).
import { Logger, run, makeWorkerUtils } from "graphile-worker";

const jobs = Number(process.argv[2]);
const mode = process.argv[3];
if (!Number.isInteger(jobs) || jobs < 1 || !["defaults", "tuned"].includes(mode)) {
  console.error("usage: graphile-peer.mjs <jobs> <defaults|tuned>");
  process.exit(2);
}
const connectionString = process.env.DATABASE_URL;
// Silent: a log line per job would measure the console, not the queue.
const logger = new Logger(() => () => {});
const utils = await makeWorkerUtils({ connectionString, logger });
await utils.migrate();
await utils.withPgClient((client) =>
  client.query(
    `DELETE FROM graphile_worker._private_jobs
     WHERE task_id IN (SELECT id FROM graphile_worker._private_tasks WHERE identifier = 'bench_noop')`,
  ),
);
await utils.withPgClient((client) =>
  client.query(
    `SELECT graphile_worker.add_jobs(ARRAY(
       SELECT json_populate_record(NULL::graphile_worker.job_spec,
                                   json_build_object('identifier', 'bench_noop', 'payload', '{}'::json))
       FROM generate_series(1, $1)))`,
    [jobs],
  ),
);

let done = 0;
let finish;
const finished = new Promise((resolve) => (finish = resolve));
const taskList = {
  bench_noop: async () => {
    done += 1;
    if (done === jobs) finish();
  },
};
const preset =
  mode === "tuned"
    ? { worker: { localQueue: { size: 100 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } }
    : {};
const started = performance.now();
const runner = await run({
  connectionString,
  concurrency: 10,
  noHandleSignals: true,
  pollInterval: 1000,
  taskList,
  preset,
  logger,
});
const guard = setTimeout(() => {
  console.error(`only ${done} of ${jobs} jobs ran within 600 s`);
  process.exit(1);
}, 600_000);
await finished;
const seconds = (performance.now() - started) / 1000;
clearTimeout(guard);
await runner.stop();
await utils.release();
console.log(`jobs_per_s=${(jobs / seconds).toFixed(0)}`);
