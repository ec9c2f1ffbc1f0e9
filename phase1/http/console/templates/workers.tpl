<h1>Workers</h1>
<div id="live">{{!live}}</div>
