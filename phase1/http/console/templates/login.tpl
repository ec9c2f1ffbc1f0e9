<h1>Log in</h1>
<p>This console needs the API token (<code>PHASE1_API_TOKEN</code>).</p>
% if wrong:
<p class="error" role="alert" id="login-error">That is not the token.</p>
% end
<form method="post" action="/console/login" class="stack">
<input type="hidden" name="next" value="{{next}}">
<label for="token">Token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit" id="login">Log in</button>
</form>
