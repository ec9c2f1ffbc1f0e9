<h1>Job <code>{{view.jobId}}</code></h1>
<div id="live">{{!live}}</div>
