<h2>Reasons</h2>
% if counts:
<div class="scroll"><table id="reasons">
<thead><tr><th scope="col">Reason</th><th scope="col">Error type</th><th scope="col">Jobs</th></tr></thead>
<tbody>
% for n, r, t in counts:
<tr><td><a href="{{link('/console/dlq', reason=r)}}">{{r}}</a></td><td>{{t}}</td><td>{{n}}</td></tr>
% end
</tbody></table></div>
% if can_write:
<form method="post" action="/console/actions/requeue" class="inline">
<input type="hidden" name="csrf" value="{{csrf}}"><input type="hidden" name="all" value="yes">
% if reason:
<input type="hidden" name="reason" value="{{reason}}">
% end
<button type="submit" id="requeue-all">Requeue all {{total}}{{(' with reason ' + reason) if reason else ''}}</button>
</form>
% end
% else:
<p id="dlq-empty">The dead-letter queue is empty.</p>
% end
% if reason:
<p>Showing reason <strong>{{reason}}</strong>. <a href="/console/dlq">Show all</a>.</p>
% end
% if entries:
<form method="post" action="/console/actions/requeue">
<input type="hidden" name="csrf" value="{{csrf}}">
<div class="scroll"><table id="dlq">
<thead><tr>{{!'<th scope="col">Pick</th>' if can_write else ''}}<th scope="col">Job</th><th scope="col">Reason</th><th scope="col">Error</th><th scope="col">Attempts</th><th scope="col">Failed</th></tr></thead>
<tbody>
% for e in entries:
<tr>
% if can_write:
<td><input type="checkbox" name="job" value="{{e['jobId']}}" aria-label="pick job {{e['jobId']}}"></td>
% end
<td><a href="/console/dlq/{{e['jobId']}}">{{e['jobId']}}</a></td><td>{{e.get('reason')}}</td><td>{{e.get('errorType') or ''}}: {{(e.get('message') or '')[:160]}}</td><td>{{len(e.get('attempts') or [])}}</td><td>{{when(e.get('failedAt'))}}</td></tr>
% end
</tbody></table></div>
% if can_write:
<button type="submit" id="requeue-picked">Requeue picked</button>
% end
</form>
<nav class="pages" aria-label="Pages">
% if page > 1:
<a href="{{link('/console/dlq', page=page - 1, reason=reason)}}" rel="prev">Previous</a>
% end
% if has_next:
<a href="{{link('/console/dlq', page=page + 1, reason=reason)}}" rel="next">Next</a>
% end
</nav>
% end
