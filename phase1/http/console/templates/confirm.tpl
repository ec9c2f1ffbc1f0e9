<h1>{{verb}}: confirm</h1>
<p id="question">{{plan.question}}</p>
% if plan.items:
<ul class="ids">
% for item in plan.items:
<li><code>{{item}}</code></li>
% end
% if plan.total > len(plan.items):
<li>… and {{plan.total - len(plan.items)}} more</li>
% end
</ul>
% end
<form method="post" action="{{action}}" class="inline">
<input type="hidden" name="csrf" value="{{csrf}}">
% for name, value in plan.fields:
<input type="hidden" name="{{name}}" value="{{value}}">
% end
<button type="submit" name="confirm" value="yes" id="confirm" autofocus>{{verb}}</button>
</form>
<a class="button secondary" href="{{plan.back}}" id="cancel-action">Go back</a>
