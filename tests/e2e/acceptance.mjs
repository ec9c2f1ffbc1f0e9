// The story's acceptance test (STORY-4.2), as written, run with Node's global fetch against a
// real phase1 server. Only the base URL, the plan id (the story's 'test-plan-123' is not a
// UUID, and the plan must exist) and a deadline, so the loop stops by itself, are added.
//
//   BASE_URL=http://127.0.0.1:8000 PLAN_ID=<uuid> node tests/e2e/acceptance.mjs
//   node tests/e2e/acceptance.mjs http://127.0.0.1:8000 <uuid>
const base = process.env.BASE_URL ?? process.argv[2];
const planId = process.env.PLAN_ID ?? process.argv[3];
const deadline = Date.now() + Number(process.env.TIMEOUT_MS ?? 30000);

function fail(message) {
  console.log(`FAIL: ${message}`);
  process.exit(1);
}

// Test enqueue workflow
const response = await fetch(`${base}/api/marketplace/analysis/${planId}`, {
  method: 'PATCH',
  body: JSON.stringify({ action: 'approve' })
});
// Expected: 202 Accepted
if (response.status !== 202) {
  fail(`expected 202, got ${response.status}: ${await response.text()}`);
}
const { jobId } = await response.json();

// Poll for completion
let status = 'pending';
let job;
while (status !== 'completed') {
  await new Promise(r => setTimeout(r, 500));
  const jobResponse = await fetch(`${base}/api/marketplace/jobs/${jobId}`);
  job = await jobResponse.json();
  status = job.status;
  if (status === 'failed') fail(`job ${jobId} failed: ${JSON.stringify(job.error)}`);
  if (Date.now() > deadline) fail(`job ${jobId} still ${status} at the deadline`);
}
// Expected: status === 'completed', tasks created
if (!(job.result && job.result.tasksCreated > 0)) {
  fail(`job ${jobId} completed without tasks: ${JSON.stringify(job.result)}`);
}
console.log(JSON.stringify({ jobId, status, tasksCreated: job.result.tasksCreated }));
