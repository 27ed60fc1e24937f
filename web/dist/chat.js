placeholder chat.js
