<p class="updated">Page {{page}}: plans {{found.offset + 1 if found.rows else 0}}–{{found.offset + len(found.rows)}}, newest first.</p>
<div class="scroll"><table id="plans">
<thead><tr><th scope="col">Plan</th><th scope="col">Status</th><th scope="col">Job</th><th scope="col">Tasks</th><th scope="col">Created</th></tr></thead>
<tbody>
% for r in found.rows:
<tr><td><a href="/console/plans/{{r['id']}}">{{r['title']}}</a></td><td>{{r['status']}}</td><td>
% if r['job_id']:
<a href="/console/jobs/{{r['job_id']}}">{{r['job_status']}}</a>
% else:
-
% end
</td><td>{{r['tasks']}}</td><td>{{when(r['created_at'])}}</td></tr>
% end
</tbody></table></div>
<nav class="pages" aria-label="Pages">
% if page > 1:
<a href="{{link('/console/plans', page=page - 1, **filters)}}" rel="prev">Previous</a>
% end
% if found.has_next:
<a href="{{link('/console/plans', page=page + 1, **filters)}}" rel="next">Next</a>
% end
</nav>
