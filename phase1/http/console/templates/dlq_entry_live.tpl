<dl class="facts">
<dt>Reason</dt><dd id="entry-reason">{{entry.get('reason')}}</dd>
<dt>Error</dt><dd class="error" id="entry-error">{{entry.get('errorType') or ''}}: {{entry.get('message') or ''}}</dd>
<dt>Failed</dt><dd>{{when(entry.get('failedAt'))}}</dd>
<dt>Plan</dt><dd>
% if entry.get('planId'):
<a href="/console/plans/{{entry['planId']}}">{{entry['planId']}}</a>
% else:
-
% end
</dd>
<dt>Job</dt><dd><a href="/console/jobs/{{entry['jobId']}}" id="job-link">timeline of the job</a></dd>
</dl>
% if can_write:
<form method="post" action="/console/actions/requeue" class="inline">
<input type="hidden" name="csrf" value="{{csrf}}"><input type="hidden" name="job" value="{{entry['jobId']}}">
<button type="submit" id="requeue">Requeue</button>
</form>
% end
<h2>Attempts</h2>
<div class="scroll"><table id="entry-attempts">
<thead><tr><th scope="col">Attempt</th><th scope="col">Status</th><th scope="col">Worker</th><th scope="col">Started</th><th scope="col">Ended</th><th scope="col">Error</th></tr></thead>
<tbody>
% for a in entry.get('attempts') or []:
<tr><td>{{a.get('attempt')}}</td><td>{{a.get('status')}}</td><td>{{a.get('worker') or '-'}}</td><td>{{when(a.get('startedAt'))}}</td><td>{{when(a.get('endedAt'))}}</td><td>{{a.get('errorType') or ''}} {{a.get('error') or ''}}</td></tr>
% end
</tbody></table></div>
<h2>Payload</h2>
<pre>{{repr(entry.get('payload'))}}</pre>
% if entry.get('traceback'):
<h2>Traceback</h2>
<pre class="traceback">{{entry['traceback']}}</pre>
% end
