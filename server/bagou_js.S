/* js/bagou.js, linked into the server so /bagou.js needs no file path. */
	.section .rodata
	.global bg_js_start
	.global bg_js_end
bg_js_start:
	.incbin "js/bagou.js"
bg_js_end:
	.byte 0
	.section .note.GNU-stack,"",@progbits
