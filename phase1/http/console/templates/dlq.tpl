<h1>Dead-letter queue</h1>
<div id="live">{{!live}}</div>
