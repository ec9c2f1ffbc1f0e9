<dl class="facts">
<dt>Id</dt><dd><code>{{plan.id}}</code></dd>
<dt>Status</dt><dd>{{plan.status}}</dd>
<dt>Job</dt><dd>
% if row:
<a href="/console/jobs/{{row['job_id']}}">{{row['job_id']}}</a> ({{row['status']}})
% else:
none yet
% end
</dd>
<dt>Created</dt><dd>{{when(plan.createdAt)}}</dd>
</dl>
<h2>Phase 1 tasks in the analysis</h2>
% if planned:
<ul>
% for t in planned:
<li><code>{{t.get('key') if isinstance(t, dict) else t}}</code> {{t.get('title') if isinstance(t, dict) else ''}}</li>
% end
</ul>
% else:
<p>The analysis lists no Phase 1 task.</p>
% end
<h2>Tasks created</h2>
% if tasks:
<ul id="tasks">
% for task in tasks:
<li><code>{{task.key}}</code> {{task.title}} ({{task.status}})</li>
% end
</ul>
% else:
<p>None yet.</p>
% end
