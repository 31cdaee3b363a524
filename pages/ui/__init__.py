"""The app's shared code: what the pages (the numbered files one level up) import.

Kept out of the top of pages/ on purpose: Streamlit treats every file there as a page, and a helper listed
as a page could be opened by a deep link. Only page files sit at the top of pages/.
"""
