<h1>Plan <span id="plan-heading">{{plan.title}}</span></h1>
<div id="live">{{!live}}</div>
