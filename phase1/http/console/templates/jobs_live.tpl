<p class="updated">Page {{page}}: jobs {{found.offset + 1 if found.rows else 0}}–{{found.offset + len(found.rows)}}, newest first.</p>
<div class="scroll"><table id="jobs">
<thead><tr><th scope="col">Job</th><th scope="col">Plan</th><th scope="col">State</th><th scope="col">Attempt</th><th scope="col">Enqueued</th><th scope="col">Ended</th><th scope="col">Error</th></tr></thead>
<tbody>
% for r in found.rows:
<tr><td><a href="/console/jobs/{{r['job_id']}}">{{r['job_id']}}</a></td><td><a href="/console/plans/{{r['plan_id']}}">{{r['title']}}</a></td><td><span class="state {{r['status']}}">{{r['status']}}</span></td><td>{{r['attempt_number']}} / {{r['max_attempts']}}</td><td>{{when(r['created_at'])}}</td><td>{{when(r['completed_at'])}}</td><td>{{(r['error_message'] or '')[:120]}}</td></tr>
% end
</tbody></table></div>
<nav class="pages" aria-label="Pages">
% if page > 1:
<a href="{{link('/console/jobs', page=page - 1, **filters)}}" rel="prev">Previous</a>
% end
% if found.has_next:
<a href="{{link('/console/jobs', page=page + 1, **filters)}}" rel="next" id="next-page">Next</a>
% end
</nav>
