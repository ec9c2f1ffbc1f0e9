<h1>Overview of <code>{{snap.queue}}</code></h1>
<div id="live">{{!live}}</div>
