<p class="updated">Updated {{when(now)}}. Queue <code>{{queue}}</code>
% if paused:
is <strong class="badge bad">paused</strong>.
% elif paused is not None:
is running.
% end
Scheduler: {{('running (' + (scheduler.hostname or '?') + ', pid ' + str(scheduler.pid or '?') + ')') if scheduler.running else 'not running'}}.</p>
% if workers:
<div class="scroll"><table id="workers">
<thead><tr><th scope="col">Worker</th><th scope="col">Host</th><th scope="col">PID</th><th scope="col">State</th><th scope="col">Current job</th><th scope="col">Last heartbeat</th><th scope="col">Done / failed</th></tr></thead>
<tbody>
% for w in workers:
<tr><td>{{w.name}}</td><td>{{w.hostname or '-'}}</td><td>{{w.pid or '-'}}</td><td>{{w.state}}</td><td>
% if w.jobId:
<a href="/console/jobs/{{w.jobId}}">{{w.jobId}}</a>
% else:
-
% end
</td><td>{{age(w.lastHeartbeat, now)}} ago</td><td>{{w.successfulJobs}} / {{w.failedJobs}}</td></tr>
% end
</tbody></table></div>
% else:
<p id="no-workers">No worker is registered on this queue.</p>
% end
