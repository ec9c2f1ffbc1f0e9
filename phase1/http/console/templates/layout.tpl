<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{title}} · phase1 console</title>
% if csrf:
<meta name="phase1-csrf" content="{{csrf}}">
% end
<link rel="stylesheet" href="/console/static/console.css">
<script src="/console/static/console.js" defer></script>
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header>
<nav aria-label="Console">
<a class="brand" href="/console/">phase1 console</a>
<ul>
% for href, label in nav:
<li><a href="{{href}}"{{!' aria-current="page"' if label == active else ''}}>{{label}}</a></li>
% end
</ul>
% if mode:
<span class="mode" id="mode">{{mode}}</span>
% end
% if logout:
<form method="post" action="/console/logout" class="inline"><input type="hidden" name="csrf" value="{{csrf}}"><button type="submit" id="logout">Log out</button></form>
% end
</nav>
</header>
% if flash:
<div class="flash" role="status" id="flash">{{flash}}</div>
% end
<main id="main" tabindex="-1">
{{!content}}
</main>
</body>
</html>
