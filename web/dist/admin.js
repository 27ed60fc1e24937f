placeholder admin.js
