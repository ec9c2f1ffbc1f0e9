<dl class="facts">
<dt>State</dt><dd><span class="state {{view.status}}" id="job-status">{{view.status}}</span></dd>
<dt>Plan</dt><dd><a href="/console/plans/{{view.planId}}" id="plan-title">{{plan.title}}</a> ({{plan.status}})</dd>
<dt>Attempt</dt><dd>{{view.attempt}} of {{view.maxAttempts}}</dd>
<dt>Progress</dt><dd><progress max="100" value="{{view.progress}}">{{view.progress}} %</progress> {{view.progress}} %</dd>
<dt>Enqueued</dt><dd>{{when(view.enqueuedAt)}}</dd>
<dt>Started</dt><dd>{{when(view.startedAt)}}</dd>
<dt>Ended</dt><dd>{{when(view.completedAt)}}</dd>
% if view.nextRetryAt:
<dt>Next retry</dt><dd>{{when(view.nextRetryAt)}} ({{countdown(view.nextRetryAt)}})</dd>
% end
% if view.error:
<dt>Error</dt><dd class="error" id="job-error">{{view.error.type or ''}}: {{view.error.message}}</dd>
% end
% if trace:
<dt>Trace id</dt><dd><code id="trace-id">{{trace}}</code></dd>
% end
</dl>
% if can_write and view.status in ('pending', 'active', 'retrying'):
<form method="post" action="/console/actions/cancel" class="inline">
<input type="hidden" name="csrf" value="{{csrf}}"><input type="hidden" name="job" value="{{view.jobId}}">
<label for="cancel-reason">Reason</label> <input id="cancel-reason" name="reason" maxlength="500">
<button type="submit" id="cancel">Cancel job</button>
</form>
% end
% if entry:
<p class="warning">In the dead-letter queue ({{entry.get('reason')}}). <a href="/console/dlq/{{view.jobId}}">Inspect the entry</a>.</p>
% if can_write:
<form method="post" action="/console/actions/requeue" class="inline">
<input type="hidden" name="csrf" value="{{csrf}}"><input type="hidden" name="job" value="{{view.jobId}}">
<button type="submit" id="requeue">Requeue</button>
</form>
% end
% end
<h2>Timeline</h2>
<div class="scroll"><table id="timeline">
<thead><tr><th scope="col">Attempt</th><th scope="col">Status</th><th scope="col">Worker</th><th scope="col">Started</th><th scope="col">Duration</th><th scope="col">Error</th></tr></thead>
<tbody>
% for t in timeline:
% a = t['row']
<tr><td>{{a['attempt']}}</td><td><span class="state {{a['status']}}">{{a['status']}}</span></td><td>{{a['worker'] or '-'}}</td><td>{{when(a['started_at'])}}</td><td>{{duration(a['started_at'], a['ended_at'])}}</td><td>{{(a['error_type'] + ': ') if a['error_type'] else ''}}{{a['error_message'] or ''}}
% if t['extra']:
<dl class="extra">
% for k, v in t['extra'].items():
<dt>{{k.replace('_', ' ')}}</dt><dd>{{v}}</dd>
% end
</dl>
% end
</td></tr>
% end
</tbody></table></div>
<h2>Events</h2>
% if events:
<ol class="events" id="events">
% for sid, e in events:
<li><time>{{when(e.at)}}</time> <strong>{{e.type}}</strong>{{(' attempt ' + str(e.attempt)) if e.attempt else ''}}
% if e.type == 'job:failed':
— {{e.data.get('reason') or ''}} {{(e.data.get('error') or {}).get('message') or ''}}{{' (final)' if e.data.get('final') else ''}}
% elif e.type == 'job:progress':
— {{e.data.get('progress')}} %
% end
</li>
% end
</ol>
% else:
<p>No event of this job is left in the stream.</p>
% end
<h2>Tasks</h2>
% if tasks:
<ul id="tasks">
% for task in tasks:
<li><code>{{task.key}}</code> {{task.title}} ({{task.status}})</li>
% end
</ul>
% else:
<p>No task created yet.</p>
% end
