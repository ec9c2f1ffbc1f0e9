<h1>Error {{status}}</h1>
<p class="error" id="error-message">{{message}}</p>
<p><a href="/console/">Back to the overview</a></p>
