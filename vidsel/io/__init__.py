"""vidsel.io"""
