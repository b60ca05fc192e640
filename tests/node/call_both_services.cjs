// A client of both services in another language, from the committed protos alone (no generated
// code): @grpc/proto-loader reads protos/, @grpc/grpc-js calls. tests/node/test_node_client.py
// runs it against a real scorer and optimizer on loopback and checks what it prints.
//
//   node call_both_services.cjs SCORER_ADDRESS OPTIMIZER_ADDRESS TASK_ID
//
// Prints one JSON object of what it saw; exits non-zero if a call fails unexpectedly.
"use strict";

const path = require("node:path");
const { createRequire } = require("node:module");

const repo = path.resolve(__dirname, "..", "..");
const requireTool = createRequire(path.join(repo, "tools", "node", "package.json"));
const grpc = requireTool("@grpc/grpc-js");
const protoLoader = requireTool("@grpc/proto-loader");

function load(file) {
  const definition = protoLoader.loadSync(path.join(repo, "protos", file), {
    includeDirs: [path.join(repo, "protos")],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition);
}

const call = (client, method, request) =>
  new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + 60_000 }, (err, reply) => (err ? reject(err) : resolve(reply)));
  });

const statusOf = (promise) =>
  promise.then(
    () => "OK",
    (err) => Object.keys(grpc.status).find((name) => grpc.status[name] === err.code),
  );

function watch(client, runId) {
  return new Promise((resolve, reject) => {
    const events = [];
    const stream = client.WatchRun({ run_id: runId, after_sequence: 0 });
    stream.on("data", (event) => events.push(event));
    stream.on("error", reject);
    stream.on("end", () => resolve(events));
  });
}

async function main() {
  const [scorerAddress, optimizerAddress, taskId] = process.argv.slice(2);
  const { promptclimb: s } = load("promptclimb/scorer/v1/scorer.proto");
  const { promptclimb: o } = load("promptclimb/optimizer/v1/optimizer.proto");
  const scorer = new s.scorer.v1.Scorer(scorerAddress, grpc.credentials.createInsecure());
  const optimizer = new o.optimizer.v1.Optimizer(optimizerAddress, grpc.credentials.createInsecure());

  const tasks = await call(scorer, "ListTasks", { page_size: 1 });
  const task = await call(scorer, "GetTask", { task_id: taskId });
  const scored = await call(scorer, "Score", {
    task_id: taskId,
    templates: ["a photo of a {}.", "no placeholder"],
    split: "SPLIT_TRAIN",
    model_digest: task.model_digest,
  });
  // Per-class prompts: one list per class in label order, plain text (no braces), with per-class accuracy.
  const perClass = await call(scorer, "Score", {
    task_id: taskId,
    class_prompt_sets: [
      { classes: task.class_names.map((name) => ({ prompts: [`a photo of a ${name}`, name] })) },
      { classes: task.class_names.map((name, i) => ({ prompts: i === 0 ? [] : [name] })) },
    ],
    per_class_accuracy: true,
  });
  const wrongPin = await statusOf(
    call(scorer, "Score", { task_id: taskId, templates: ["a {}"], model_digest: "0".repeat(32) }),
  );

  const spec = {
    task_id: taskId, initial_pool_size: 4, restarts: 1, resets: 1, iterations: 2, top_k: 2, templates_per_call: 2,
    show_accuracies: false, max_wall_time: { seconds: 600, nanos: 0 }, label: "from node",
  };
  const requestId = `node-${process.pid}-${Date.now()}`;
  const started = await call(optimizer, "StartRun", { spec, request_id: requestId });
  const repeated = await call(optimizer, "StartRun", { spec, request_id: requestId });
  const events = await watch(optimizer, started.run_id);
  const run = await call(optimizer, "GetRun", { run_id: started.run_id });
  const succeeded = await call(optimizer, "ListRuns", { page_size: 10, states: ["RUN_STATE_SUCCEEDED"] });
  const failed = await call(optimizer, "ListRuns", { states: ["RUN_STATE_FAILED"] });

  console.log(JSON.stringify({
    scorer: {
      listed: tasks.tasks.map((t) => t.task_id),
      next_page_token: tasks.next_page_token,
      task: { task_id: task.task_id, class_names: task.class_names, model_digest: task.model_digest,
              model_version: task.model_version },
      results: scored.results.map((r) => ({ template: r.template, accuracy: r.accuracy, error: r.error })),
      response_model_digest: scored.model_digest,
      class_prompt_set_results: perClass.class_prompt_set_results.map((r) => ({
        accuracy: r.accuracy, correct: r.correct, total: r.total, error_reason: r.error_reason,
        class_correct: r.class_accuracies.map((c) => c.correct), class_total: r.class_accuracies.map((c) => c.total),
      })),
      wrong_pin_status: wrongPin,
    },
    optimizer: {
      started: { run_id: started.run_id, state: started.state, model_digest: started.model_digest },
      repeated_run_id: repeated.run_id,
      event_kinds: events.map((e) => e.event),
      event_times: events.map((e) => Number(e.time.seconds)),
      run: {
        state: run.state, stop_reason: run.stop_reason, best: run.best.map((b) => b.template),
        show_accuracies: run.spec.show_accuracies, max_wall_time_seconds: Number(run.spec.max_wall_time.seconds),
        active_time_seconds: Number(run.counters.active_time.seconds) + run.counters.active_time.nanos / 1e9,
        create_time_seconds: Number(run.create_time.seconds), model_digest: run.model_digest,
      },
      succeeded_run_ids: succeeded.runs.map((r) => r.run_id),
      failed_run_ids: failed.runs.map((r) => r.run_id),
    },
  }));
  scorer.close();
  optimizer.close();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
