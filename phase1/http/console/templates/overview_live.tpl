<p class="updated">Updated {{when(now)}}.
% if paused is None:
Pausing is not available in this build.
% elif paused:
<strong class="badge bad" id="paused-state">paused</strong>
% else:
<strong class="badge good" id="paused-state">running</strong>
% end
% if can_write and paused is not None:
<form method="post" action="/console/actions/{{'resume' if paused else 'pause'}}" class="inline">
<input type="hidden" name="csrf" value="{{csrf}}"><input type="hidden" name="queue" value="{{snap.queue}}">
<button type="submit" id="{{'resume' if paused else 'pause'}}">{{'Resume queue' if paused else 'Pause queue'}}</button>
</form>
% end
</p>
% for warning in snap.warnings:
<p class="warning">{{warning}}</p>
% end
<div class="cards">
<section class="card"><h2>Queued</h2><p class="big" id="queued">{{snap.queued}}</p></section>
<section class="card"><h2>Active</h2><p class="big" id="active-count">{{len(snap.active)}}</p></section>
<section class="card"><h2>Scheduled retries</h2><p class="big" id="scheduled-count">{{snap.scheduled.count}}</p></section>
<section class="card"><h2>DLQ</h2><p class="big"><a href="/console/dlq" id="dlq-size">{{snap.dlq.size}}</a></p>
% if snap.dlq.oldest:
<p class="small">oldest: <a href="/console/dlq/{{snap.dlq.oldest.jobId}}">{{snap.dlq.oldest.jobId[:8]}}</a>, {{age(snap.dlq.oldest.failedAt, now)}} ago ({{snap.dlq.oldest.reason}})</p>
% end
</section>
<section class="card"><h2>Workers</h2><p class="big"><a href="/console/workers" id="worker-count">{{len(snap.workers)}}</a></p>
<p class="small">scheduler: {{'running on ' + (snap.scheduler.hostname or '?') if snap.scheduler.running else 'not running'}}</p></section>
<section class="card"><h2>Last hour</h2><p class="small" id="last-hour">{{hour['completed']}} completed, {{hour['failed']}} failed, {{hour['retried']}} attempts retried</p></section>
</div>
<div class="charts">
<figure>{{!outcomes_svg}}<figcaption>Completed, failed and retried per minute</figcaption></figure>
<figure>{{!latency_svg}}<figcaption>Approve → completed latency (p50, p95)</figcaption></figure>
</div>
<h2>Active jobs</h2>
% if snap.active:
<div class="scroll"><table id="active-jobs">
<thead><tr><th scope="col">Job</th><th scope="col">Attempt</th><th scope="col">Progress</th><th scope="col">Worker</th><th scope="col">Age</th></tr></thead>
<tbody>
% for a in snap.active:
<tr><td><a href="/console/jobs/{{a.jobId}}">{{a.jobId}}</a></td><td>{{a.attempt or '-'}} / {{a.maxAttempts or '-'}}</td><td>{{a.progress if a.progress is not None else '-'}} %</td><td>{{a.worker or '-'}}</td><td>{{span(a.ageSeconds)}}</td></tr>
% end
</tbody></table></div>
% else:
<p>No job is running.</p>
% end
<h2>Scheduled retries</h2>
% if scheduled:
<div class="scroll"><table id="scheduled">
<thead><tr><th scope="col">Job</th><th scope="col">Plan</th><th scope="col">Next attempt</th><th scope="col">Runs</th></tr></thead>
<tbody>
% for job_id, at, row in scheduled:
<tr><td><a href="/console/jobs/{{job_id}}">{{job_id}}</a></td><td>{{row['title'] if row else '-'}}</td><td>{{(row['attempt_number'] + 1) if row else '-'}} of {{row['max_attempts'] if row else '-'}}</td><td>{{countdown(at, now)}}</td></tr>
% end
</tbody></table></div>
% else:
<p>No retry is waiting.</p>
% end
