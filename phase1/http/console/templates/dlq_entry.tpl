<h1>DLQ entry <code>{{entry['jobId']}}</code></h1>
<div id="live">{{!live}}</div>
