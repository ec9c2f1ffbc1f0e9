<h1>Plans</h1>
<form method="get" action="/console/plans" class="filters" role="search">
<label for="f-status">Status</label>
<select id="f-status" name="status">
<option value="">any</option>
% for s in states:
<option value="{{s}}"{{!' selected' if filters['status'] == s else ''}}>{{s}}</option>
% end
</select>
<label for="f-title">Title</label>
<input id="f-title" name="title" value="{{filters['title'] or ''}}">
<button type="submit">Filter</button>
</form>
<div id="live">{{!live}}</div>
