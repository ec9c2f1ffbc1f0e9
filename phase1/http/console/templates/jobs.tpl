<h1>Jobs</h1>
<form method="get" action="/console/jobs" class="filters" role="search">
<label for="f-state">State</label>
<select id="f-state" name="state">
<option value="">any</option>
% for s in states:
<option value="{{s}}"{{!' selected' if filters['state'] == s else ''}}>{{s}}</option>
% end
</select>
<label for="f-plan">Plan (id or title)</label>
<input id="f-plan" name="plan" value="{{filters['plan']}}">
<label for="f-since">Enqueued within</label>
<select id="f-since" name="since">
% for s in since_choices:
<option value="{{s}}"{{!' selected' if (filters['since'] or 'all') == s else ''}}>{{s}}</option>
% end
</select>
<button type="submit" id="filter">Filter</button>
</form>
<div id="live">{{!live}}</div>
