"""safefql.shields"""
