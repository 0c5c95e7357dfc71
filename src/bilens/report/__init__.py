"""Layer 4: every rendering. Tables as text and Markdown, the HTML report, the plots."""
